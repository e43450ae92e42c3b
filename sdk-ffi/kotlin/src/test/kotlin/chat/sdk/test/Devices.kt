package chat.sdk.test

import chat.sdk.ChatClient
import chat.sdk.ClientConfig
import chat.sdk.ConnectionState
import chat.sdk.Event
import chat.sdk.EventStream
import chat.sdk.Message
import chat.sdk.SendOutcome
import chat.sdk.SendResult
import chat.sdk.connect
import kotlinx.coroutines.CoroutineScope
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.Job
import kotlinx.coroutines.SupervisorJob
import kotlinx.coroutines.cancel
import kotlinx.coroutines.channels.Channel
import kotlinx.coroutines.launch
import kotlinx.coroutines.withTimeout
import kotlinx.coroutines.withTimeoutOrNull
import org.junit.jupiter.api.Assertions.fail
import java.nio.file.Files
import java.nio.file.Path
import java.util.Collections
import kotlin.time.Duration
import kotlin.time.Duration.Companion.seconds

/** Generous: the box is small and shared; nothing here measures speed. */
val RECV_TIMEOUT: Duration = 45.seconds
val CONNECT_TIMEOUT: Duration = 90.seconds

/**
 * One connected device: the binding's [ChatClient] and a reader that takes every event from its
 * [EventStream] as it comes (as an app must), keeping them for the test to pick from.
 */
class Device private constructor(
    val user: String,
    val device: String,
    val client: ChatClient,
    private val scope: CoroutineScope,
) {
    val stream: EventStream = client.events()
    private val inbox = Channel<Event>(Channel.UNLIMITED)
    /** Every event in arrival order, for failure messages. */
    val log: MutableList<Event> = Collections.synchronizedList(mutableListOf())
    private val reader: Job = scope.launch {
        try {
            while (true) {
                val ev = stream.next() ?: break
                log.add(ev)
                inbox.send(ev)
            }
        } finally {
            inbox.close()
        }
    }

    val name: String get() = "$user/$device"

    /** Events taken from the stream that no [until] has picked yet, oldest first. */
    private val pending = ArrayDeque<Event>()

    /**
     * The first event, oldest first, for which [pick] returns non-null: from those passed over
     * by earlier calls, then from the stream. Events passed over stay for later calls. Fails
     * naming [what] (and what is waiting) if none comes within [timeout] or the stream ends.
     */
    suspend fun <T : Any> until(what: String, timeout: Duration = RECV_TIMEOUT, pick: (Event) -> T?): T {
        val it = pending.iterator()
        while (it.hasNext()) {
            pick(it.next())?.let { found ->
                it.remove()
                return found
            }
        }
        var ended = false
        val found = withTimeoutOrNull(timeout) {
            var result: T? = null
            while (result == null) {
                val ev = inbox.receiveCatching().getOrNull()
                if (ev == null) {
                    ended = true
                    break
                }
                result = pick(ev)
                if (result == null) pending.addLast(ev)
            }
            result
        }
        return found ?: fail(
            "$name: no $what ${if (ended) "before the event stream ended" else "within $timeout"}; " +
                "${pending.size} events waiting:\n" + pending.joinToString("\n") { "  $it" },
        )
    }

    /** The next [n] messages of [chatId] (other events skipped), in arrival order. */
    suspend fun messages(chatId: String, n: Int): List<Message> =
        (1..n).map { i ->
            until("message $i of $n in chat $chatId") { ev ->
                (ev as? Event.Message)?.message?.takeIf { it.chatId == chatId }
            }
        }

    /** Messages of [chatId] up to and including the first whose text is [text]. */
    suspend fun messagesUntilText(chatId: String, text: String): List<Message> {
        val out = mutableListOf<Message>()
        while (true) {
            val m = until("message \"$text\" in chat $chatId (got ${texts(out)} so far)") { ev ->
                (ev as? Event.Message)?.message?.takeIf { it.chatId == chatId }
            }
            out += m
            if (m.content.text == text) return out
        }
    }

    /** The SendResult for [clientMsgId]. */
    suspend fun sendResult(clientMsgId: String): SendResult =
        until("SendResult for $clientMsgId") { ev ->
            (ev as? Event.SendResult)?.result?.takeIf { it.clientMsgId == clientMsgId }
        }

    /** The message the server stored for [clientMsgId]; fails if the send was refused. */
    suspend fun sent(clientMsgId: String): Message =
        when (val o = sendResult(clientMsgId).outcome) {
            is SendOutcome.Sent -> o.message
            is SendOutcome.Failed -> fail("$name: send $clientMsgId failed: $o")
        }

    /** Wait until the client is in [state]. */
    suspend fun waitFor(state: ConnectionState, timeout: Duration = CONNECT_TIMEOUT) {
        client.waitFor(state, timeout.inWholeMilliseconds.toULong())
    }

    /** Close the client (bounded), end the reader, free the native objects. Never throws. */
    suspend fun close() {
        runCatching { withTimeout(30.seconds) { client.closeClient() } }
        runCatching { stream.closeStream() }
        runCatching { withTimeoutOrNull(10.seconds) { reader.join() } }
        reader.cancel()
        runCatching { stream.close() }   // AutoCloseable: frees the Rust handle
        runCatching { client.close() }
    }

    companion object {
        /** A clear failure instead of JNA's "Unable to load library" when the .so is not built. */
        private val nativeLibraryPresent: Unit by lazy {
            val dir = System.getProperty("native.dir") ?: System.getProperty("jna.library.path")
            if (dir != null) {
                val lib = java.io.File(dir, System.mapLibraryName("chat_sdk_ffi"))
                check(lib.isFile) { "$lib is missing: run scripts/bindings (or pass -Dnative.dir=DIR)" }
            }
        }

        /** Connect [user]'s [device] to [server] (a fresh token, a data dir of its own), synced. */
        suspend fun connect(server: Chatd, scope: CoroutineScope, user: String, device: String = "phone"): Device {
            nativeLibraryPresent
            val dataDir: Path = Files.createDirectories(server.dataDir.resolveSibling("${server.dataDir.fileName}-clients/$user-$device"))
            val cfg = ClientConfig(
                endpoint = server.endpoint,
                token = server.token(user, device),
                deviceId = device,
                dataDir = dataDir.toString(),
                clientVersion = "chat-sdk-kotlin-tests",
                connectTimeoutMs = 10_000u,
                reconnectInitialMs = 200u,
                reconnectMaxMs = 2_000u,
                ackDelayMs = 20u,
            )
            val client = connect(cfg)
            val d = Device(user, device, client, scope)
            try {
                d.waitFor(ConnectionState.CONNECTED)
            } catch (e: Throwable) {
                val status = runCatching { client.status() }.getOrNull()
                d.close()
                throw AssertionError("$user/$device did not connect to ${server.endpoint}: $e (status $status)", e)
            }
            return d
        }
    }
}

/** Devices of one test, closed together; also owns the coroutine scope their readers run in. */
class Devices : AutoCloseable {
    val scope = CoroutineScope(SupervisorJob() + Dispatchers.IO)
    private val all = mutableListOf<Device>()

    suspend fun connect(server: Chatd, user: String, device: String = "phone"): Device =
        Device.connect(server, scope, user, device).also { synchronized(all) { all += it } }

    suspend fun closeAll() {
        val ds = synchronized(all) { all.toList().also { all.clear() } }
        for (d in ds) d.close()
    }

    override fun close() {
        kotlinx.coroutines.runBlocking { closeAll() }
        scope.cancel()
    }
}

fun texts(ms: List<Message>): List<String> = ms.map { it.content.text }
fun seqs(ms: List<Message>): List<Long> = ms.map { it.seq.toLong() }
