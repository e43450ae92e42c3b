package chat.sdk.test

import java.io.File
import java.net.InetSocketAddress
import java.net.ServerSocket
import java.nio.file.Files
import java.nio.file.Path
import java.nio.file.Paths
import java.util.concurrent.CompletableFuture
import java.util.concurrent.TimeUnit
import java.util.concurrent.TimeoutException

/**
 * One real `chatd serve` on the embedded store, for one test: a fixed free loopback port (so a
 * restart comes back at the same address), a data dir of its own, stdout/stderr kept in files.
 *
 * The binary comes from the system property `chatd.bin` or the environment variable
 * `CHATD_BIN` (the pom passes both).
 */
class Chatd private constructor(val dataDir: Path, val port: Int) : AutoCloseable {
    private var process: Process? = null
    private var starts = 0

    val endpoint: String get() = "http://127.0.0.1:$port"

    val running: Boolean get() = process?.isAlive == true

    /** Start the server and wait for `chatd listening on ADDR`. */
    fun start() {
        check(process?.isAlive != true) { "chatd already running" }
        starts += 1
        val log = dataDir.resolveSibling("${dataDir.fileName}.stderr.$starts.log").toFile()
        val pb = ProcessBuilder(
            bin, "serve",
            "--listen", "127.0.0.1:$port",
            "--data-dir", dataDir.toString(),
        )
        pb.environment().putAll(serverEnv())
        pb.redirectError(ProcessBuilder.Redirect.to(log))
        pb.redirectInput(ProcessBuilder.Redirect.from(File("/dev/null")))
        val p = pb.start()
        process = p
        live.add(p)
        // Drain stdout for the process's whole life; complete once the ready line is seen.
        val ready = CompletableFuture<String>()
        val reader = Thread({
            try {
                p.inputStream.bufferedReader().forEachLine { line ->
                    if (!ready.isDone && line.startsWith("chatd listening on ")) {
                        ready.complete(line.removePrefix("chatd listening on ").trim())
                    }
                }
            } catch (_: Exception) {
            }
            ready.completeExceptionally(IllegalStateException("chatd stdout closed before ready"))
        }, "chatd-$port-stdout")
        reader.isDaemon = true
        reader.start()
        try {
            ready.get(STARTUP_TIMEOUT_S, TimeUnit.SECONDS)
        } catch (e: Exception) {
            stop()
            val why = if (e is TimeoutException) "not ready within ${STARTUP_TIMEOUT_S}s" else "${e.cause ?: e}"
            throw IllegalStateException("chatd on port $port: $why; stderr:\n${tail(log)}", e)
        }
    }

    /**
     * SIGTERM (graceful: finish in-flight sends, close sessions) and wait for the exit; SIGKILL
     * if it takes too long. [kill]: SIGKILL at once, a crash. Idempotent.
     */
    fun stop(kill: Boolean = false) {
        val p = process ?: return
        process = null
        try {
            if (!p.isAlive) return
            if (kill) p.destroyForcibly() else p.destroy()
            if (!p.waitFor(STOP_TIMEOUT_S, TimeUnit.SECONDS)) {
                p.destroyForcibly()
                p.waitFor(10, TimeUnit.SECONDS)
            }
        } finally {
            live.remove(p)
        }
    }

    /** Stop (see [stop]), then start again on the same port and data dir. */
    fun restart(kill: Boolean = false) {
        stop(kill)
        // The port was just freed; tolerate a short window where binding it again fails.
        var last: Exception? = null
        repeat(10) {
            try {
                start()
                return
            } catch (e: Exception) {
                last = e
                Thread.sleep(500)
            }
        }
        throw IllegalStateException("chatd did not come back on port $port", last)
    }

    /** A token for `user` on `device`, signed with this server's secret. */
    fun token(user: String, device: String): String {
        val pb = ProcessBuilder(bin, "token", "--user", user, "--device", device, "--data-dir", dataDir.toString())
        pb.environment().putAll(serverEnv())
        pb.redirectInput(ProcessBuilder.Redirect.from(File("/dev/null")))
        val p = pb.start()
        val err = CompletableFuture.supplyAsync { p.errorStream.bufferedReader().readText() }
        val out = p.inputStream.bufferedReader().readText()
        if (!p.waitFor(60, TimeUnit.SECONDS)) {
            p.destroyForcibly()
            error("chatd token did not finish")
        }
        check(p.exitValue() == 0) { "chatd token failed (${p.exitValue()}): ${err.get()}" }
        return out.trim().also { check(it.isNotEmpty()) { "chatd token printed nothing" } }
    }

    override fun close() = stop()

    companion object {
        const val STARTUP_TIMEOUT_S = 90L
        const val STOP_TIMEOUT_S = 20L

        /** Servers still running: killed when the JVM exits however it exits (fork timeout, crash). */
        private val live: MutableSet<Process> = java.util.concurrent.ConcurrentHashMap.newKeySet()

        init {
            Runtime.getRuntime().addShutdownHook(Thread {
                for (p in live) p.destroyForcibly()
            })
        }

        val bin: String by lazy {
            val b = System.getProperty("chatd.bin")?.takeIf { it.isNotBlank() }
                ?: System.getenv("CHATD_BIN")?.takeIf { it.isNotBlank() }
                ?: error("set CHATD_BIN (or -Dchatd.bin) to the chatd binary")
            check(File(b).canExecute()) { "chatd binary $b is missing or not executable (cargo build -p chatd)" }
            File(b).absolutePath
        }

        private val workDir: Path by lazy {
            val d = System.getProperty("tests.work.dir")?.takeIf { it.isNotBlank() }
                ?.let { Paths.get(it) }
                ?: Paths.get(System.getProperty("java.io.tmpdir"), "chat-sdk-kotlin-tests")
            // Servers' data and logs of the previous run go; this run's stay for a look after it.
            d.toFile().listFiles()?.forEach { it.deleteRecursively() }
            Files.createDirectories(d)
        }

        fun serverEnv(): Map<String, String> = mapOf(
            "CHATD_RATE_LIMIT_PER_SEC" to (System.getenv("CHATD_RATE_LIMIT_PER_SEC") ?: "1000"),
            "CHATD_RATE_LIMIT_BURST" to (System.getenv("CHATD_RATE_LIMIT_BURST") ?: "1000"),
            // Every client connects from loopback, and restart tests reconnect quickly (leaving
            // sessions behind until the server notices their connection died).
            "CHATD_MAX_CONNECTIONS_PER_IP_PER_SEC" to (System.getenv("CHATD_MAX_CONNECTIONS_PER_IP_PER_SEC") ?: "0"),
            "CHATD_MAX_SESSIONS_PER_USER" to (System.getenv("CHATD_MAX_SESSIONS_PER_USER") ?: "0"),
            "RUST_LOG" to (System.getenv("RUST_LOG") ?: "info"),
        )

        /** A fresh server on a free port, started. Retries with another port if one is taken meanwhile. */
        fun launch(name: String): Chatd {
            var last: Exception? = null
            repeat(5) {
                val dir = Files.createTempDirectory(workDir, "$name-")
                val c = Chatd(dir, freePort())
                try {
                    c.start()
                    return c
                } catch (e: Exception) {
                    last = e
                    c.stop()
                }
            }
            throw IllegalStateException("could not start chatd", last)
        }

        private fun freePort(): Int = ServerSocket().use { s ->
            s.reuseAddress = false
            s.bind(InetSocketAddress("127.0.0.1", 0))
            s.localPort
        }

        private fun tail(f: File): String =
            if (f.exists()) f.readLines().takeLast(30).joinToString("\n") else "(no stderr log)"
    }
}
