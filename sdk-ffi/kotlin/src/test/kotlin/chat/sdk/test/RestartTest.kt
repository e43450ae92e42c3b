package chat.sdk.test

import chat.sdk.ConnectionState
import chat.sdk.Content
import chat.sdk.Event
import chat.sdk.Message
import chat.sdk.SendOutcome
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeout
import org.junit.jupiter.api.AfterEach
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.BeforeEach
import org.junit.jupiter.params.ParameterizedTest
import org.junit.jupiter.params.provider.ValueSource
import org.junit.jupiter.api.Timeout
import java.util.concurrent.TimeUnit
import kotlin.time.Duration.Companion.minutes

/**
 * A server of its own, stopped and started again under two connected clients: once gracefully
 * (SIGTERM), once as a crash (SIGKILL). The clients reconnect by themselves and resume.
 */
@Timeout(value = 6, unit = TimeUnit.MINUTES)
class RestartTest {
    private lateinit var server: Chatd
    private val devices = Devices()

    @BeforeEach
    fun startServer() {
        server = Chatd.launch("restart")
    }

    @AfterEach
    fun stopAll() {
        try {
            devices.close()
        } finally {
            if (::server.isInitialized) server.stop()
        }
    }

    @ParameterizedTest(name = "killed = {0}")
    @ValueSource(booleans = [false, true])
    fun `a server restart under connected clients loses and repeats nothing`(kill: Boolean) = runBlocking {
        withTimeout(5.minutes) {
            val alice = devices.connect(server, "alice")
            val bob = devices.connect(server, "bob")
            val chat = alice.client.openDirectChat("bob").chatId

            suspend fun sendAll(prefix: String, n: Int) =
                (1..n).map { alice.client.send(chat, Content(text = "$prefix$it")).clientMsgId }

            // a1..a3 before: stored and delivered.
            val before = sendAll("a", 3)
            before.forEach { alice.sent(it) }
            assertEquals(listOf("a1", "a2", "a3"), texts(bob.messages(chat, 3)))

            // b1..b3 queued just before the server goes down (some may be in flight when it
            // stops: SIGTERM lets it finish them, SIGKILL may lose their acks), c1..c3 while it
            // is down.
            val around = sendAll("b", 3)
            server.stop(kill)
            val during = sendAll("c", 3)
            for (d in listOf(alice, bob)) {
                d.until("${d.name} noticing the server is gone") { ev ->
                    (ev as? Event.Connection)?.status?.takeIf { it.state == ConnectionState.RECONNECTING }
                }
            }

            server.restart()  // already stopped: starts it again on the same port
            alice.waitFor(ConnectionState.CONNECTED)
            bob.waitFor(ConnectionState.CONNECTED)

            // d1..d3 after, then an end marker.
            val after = sendAll("d", 3)
            val end = sendAll("end", 1)
            val keys = before + around + during + after + end

            // alice: one Sent per key over the client's whole life, none refused. The marker's
            // result comes last (one chat, one send in flight at a time: results come in queue
            // order), and the log holds every event taken before it.
            alice.sent(end.single())
            val results = alice.log.toList()
                .mapNotNull { (it as? Event.SendResult)?.result }
                .filter { it.chatId == chat }
                .groupBy({ it.clientMsgId }, { it.outcome })
            assertEquals(keys.toSet(), results.keys, "keys with a SendResult")
            for (k in keys) {
                val rs = results.getValue(k)
                assertEquals(1, rs.size, "SendResults for $k: $rs")
                assertTrue(rs.single() is SendOutcome.Sent, "send $k: $rs")
            }
            val stored = keys.map { (results.getValue(it).single() as SendOutcome.Sent).message }
            assertEquals((1L..13L).toList(), seqs(stored), "seqs of alice's sends")
            assertTrue(alice.client.pendingSends().isEmpty(), "alice's queue is empty")

            // bob: every message exactly once, in order, over the client's whole life.
            bob.messagesUntilText(chat, "end1")
            val got: List<Message> = bob.log.toList()
                .mapNotNull { (it as? Event.Message)?.message }
                .filter { it.chatId == chat }
            assertEquals(
                listOf("a1", "a2", "a3", "b1", "b2", "b3", "c1", "c2", "c3", "d1", "d2", "d3", "end1"),
                texts(got),
                "bob's messages",
            )
            assertEquals((1L..13L).toList(), seqs(got))
            assertEquals(stored.map { it.messageId }, got.map { it.messageId })

            // The server agrees: thirteen messages, nothing stored twice.
            val history = bob.client.getHistoryAfter(chat, 1uL, 200u).messages
            assertEquals((2L..13L).toList(), seqs(history), "history after seq 1")
            assertEquals(13uL, bob.client.getChat(chat).lastSeq)

            // Both clients really went through a reconnect.
            for (d in listOf(alice, bob)) {
                assertTrue(d.client.stats().connects >= 2uL, "${d.name} reconnected: ${d.client.stats()}")
            }
        }
    }
}
