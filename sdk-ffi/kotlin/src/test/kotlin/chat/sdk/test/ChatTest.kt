package chat.sdk.test

import chat.sdk.ChatException
import chat.sdk.ChatKind
import chat.sdk.Code
import chat.sdk.Content
import chat.sdk.Event
import chat.sdk.ReceiptKind
import chat.sdk.SendOutcome
import chat.sdk.TypingState
import kotlinx.coroutines.CoroutineScope
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeout
import org.junit.jupiter.api.AfterAll
import org.junit.jupiter.api.AfterEach
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Assertions.fail
import org.junit.jupiter.api.BeforeAll
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.TestInstance
import org.junit.jupiter.api.Timeout
import java.util.concurrent.TimeUnit
import kotlin.time.Duration.Companion.minutes

/**
 * The Kotlin bindings against one live chatd (embedded store) shared by this class; every test
 * uses users of its own so the tests do not see each other's chats.
 */
@TestInstance(TestInstance.Lifecycle.PER_CLASS)
@Timeout(value = 5, unit = TimeUnit.MINUTES)
class ChatTest {
    private lateinit var server: Chatd
    private val devices = Devices()

    @BeforeAll
    fun startServer() {
        server = Chatd.launch("chat")
    }

    @AfterEach
    fun closeClients() = runBlocking { devices.closeAll() }

    @AfterAll
    fun stopServer() {
        devices.close()
        if (::server.isInitialized) server.stop()
    }

    /** A test body with an overall bound (JUnit's @Timeout is the backstop). */
    private fun scenario(body: suspend CoroutineScope.() -> Unit) = runBlocking {
        withTimeout(4.minutes) { body() }
    }

    @Test
    fun `two clients chat one to one`() = scenario {
        val alice = devices.connect(server, "alice1")
        val bob = devices.connect(server, "bob1")

        val chat = alice.client.openDirectChat("bob1")
        assertEquals(ChatKind.DIRECT, chat.kind)
        assertEquals(setOf("alice1", "bob1"), chat.members.map { it.userId }.toSet())

        val keys = (1..3).map { i ->
            alice.client.send(chat.chatId, Content(text = "hello $i")).also {
                assertEquals(chat.chatId, it.chatId)
                assertEquals(null, it.failure)
            }.clientMsgId
        }
        assertEquals(3, keys.toSet().size, "client_msg_ids are unique: $keys")

        // alice: each send stored, in order.
        val stored = keys.map { alice.sent(it) }
        assertEquals(listOf(1L, 2L, 3L), seqs(stored), "alice's SendResults")
        assertEquals(listOf("hello 1", "hello 2", "hello 3"), texts(stored))

        // bob: the three, in seq order, from alice.
        val got = bob.messages(chat.chatId, 3)
        assertEquals(listOf(1L, 2L, 3L), seqs(got), "bob's messages: $got")
        assertEquals(listOf("hello 1", "hello 2", "hello 3"), texts(got))
        for ((m, s) in got.zip(stored)) {
            assertEquals("alice1", m.senderUserId)
            assertEquals("phone", m.senderDeviceId)
            assertEquals(s.messageId, m.messageId)
            assertEquals(s.clientMsgId, m.clientMsgId)
        }

        // Exactly once: the next message bob sees is a fresh one, not a repeat.
        val end = alice.client.send(chat.chatId, Content(text = "end")).clientMsgId
        assertEquals(4L, alice.sent(end).seq.toLong())
        val rest = bob.messagesUntilText(chat.chatId, "end")
        assertEquals(listOf(4L), seqs(rest), "after the three, bob got ${texts(rest)}")

        // bob answers; alice gets it as a message event.
        val reply = bob.client.send(chat.chatId, Content(text = "hi alice")).clientMsgId
        assertEquals(5L, bob.sent(reply).seq.toLong())
        val back = alice.messages(chat.chatId, 1).single()
        assertEquals("hi alice", back.content.text)
        assertEquals("bob1", back.senderUserId)
        assertEquals(5L, back.seq.toLong())
    }

    @Test
    fun `a group of three gets everyone else's messages`() = scenario {
        val users = listOf("alice2", "bob2", "carol2")
        val ds = users.map { devices.connect(server, it) }
        val (alice, bob, carol) = ds

        val group = alice.client.createGroup("three", listOf("bob2", "carol2"))
        assertEquals(ChatKind.GROUP, group.kind)
        assertEquals(users.toSet(), group.members.map { it.userId }.toSet())

        // Each sends two, one sender after the other (so the seqs are known).
        val expected = mutableListOf<Pair<String, String>>() // (sender, text)
        for (round in 1..2) {
            for (d in ds) {
                val text = "${d.user} says $round"
                val key = d.client.send(group.chatId, Content(text = text)).clientMsgId
                val m = d.sent(key)
                assertEquals(expected.size + 1L, m.seq.toLong(), "seq of \"$text\"")
                expected += d.user to text
            }
        }
        // Then everyone reads what the others sent: once each, in seq order.
        for (d in ds) {
            val want = expected.withIndex().filter { it.value.first != d.user }
            val got = d.messages(group.chatId, want.size)
            assertEquals(want.map { it.value.second }, texts(got), "${d.name}'s messages")
            assertEquals(want.map { it.index + 1L }, seqs(got), "${d.name}'s seqs")
            assertTrue(got.all { it.senderUserId != d.user }, "${d.name} is not given its own sends")
        }
        // Nothing repeated: a last message from carol is the next thing alice and bob see.
        val last = carol.client.send(group.chatId, Content(text = "bye")).clientMsgId
        carol.sent(last)
        for (d in listOf(alice, bob)) {
            assertEquals(listOf("bye"), texts(d.messagesUntilText(group.chatId, "bye")), "${d.name} after the rounds")
        }
    }

    @Test
    fun `typing and read receipts arrive as typed events`() = scenario {
        val alice = devices.connect(server, "alice3")
        val bob = devices.connect(server, "bob3")
        val chat = alice.client.openDirectChat("bob3")

        // Typing: started, then stopped.
        alice.client.setTyping(chat.chatId, true)
        val started = bob.until("typing started from alice3") { ev ->
            (ev as? Event.Typing)?.typing?.takeIf { it.chatId == chat.chatId && it.state == TypingState.STARTED }
        }
        assertEquals("alice3", started.userId)
        assertEquals("phone", started.deviceId)
        assertTrue(started.expiresAt > 0, "expiresAt is set: $started")

        alice.client.setTyping(chat.chatId, false)
        val stopped = bob.until("typing stopped from alice3") { ev ->
            (ev as? Event.Typing)?.typing?.takeIf { it.chatId == chat.chatId && it.state == TypingState.STOPPED }
        }
        assertEquals("alice3", stopped.userId)

        // A message, delivered to bob (his client acks it) and then read by him.
        val key = alice.client.send(chat.chatId, Content(text = "did you read this?")).clientMsgId
        val m = alice.sent(key)
        val got = bob.messages(chat.chatId, 1).single()
        assertEquals(m.seq, got.seq)

        bob.client.markRead(chat.chatId, got.seq)
        val kinds = mutableSetOf<ReceiptKind>()
        while (kinds.size < 2) {
            val r = alice.until("receipts DELIVERED and READ from bob3 (have $kinds)") { ev ->
                (ev as? Event.Receipt)?.receipt?.takeIf {
                    it.chatId == chat.chatId && it.userId == "bob3" && it.seq >= m.seq
                }
            }
            assertTrue(r.kind == ReceiptKind.DELIVERED || r.kind == ReceiptKind.READ, "receipt kind: $r")
            assertEquals(m.seq, r.seq, "receipt seq: $r")
            assertTrue(r.at > 0, "receipt time: $r")
            kinds += r.kind
        }

        // The server's view agrees.
        val now = bob.client.getChat(chat.chatId)
        assertEquals(m.seq, now.readSeq, "bob's read_seq")
        assertEquals(0uL, now.unreadCount, "bob's unread_count")
        val receipts = alice.client.getReceipts(chat.chatId, m.seq)
        assertTrue(
            receipts.any { it.userId == "bob3" && it.kind == ReceiptKind.READ },
            "GetReceipts lists bob's READ: $receipts",
        )
    }

    @Test
    fun `server errors arrive as typed exceptions`() = scenario {
        val alice = devices.connect(server, "alice4")

        val unknown = "0123456789abcdef0123456789abcdef"
        val notFound = assertThrowsSuspend<ChatException.Server>("getChat of an unknown chat") {
            alice.client.getChat(unknown)
        }
        assertEquals(Code.NOT_FOUND, notFound.code, "$notFound")
        assertFalse(notFound.detail.isBlank(), "the server says why: $notFound")

        val invalid = assertThrowsSuspend<ChatException.Server>("getChat of a malformed id") {
            alice.client.getChat("not-a-chat-id")
        }
        assertEquals(Code.INVALID_ARGUMENT, invalid.code, "$invalid")
        assertTrue(invalid.detail.contains("chat_id"), "the detail names the field: $invalid")

        // Caught by the SDK before anything is sent: a local variant, with its code.
        val local = assertThrowsSuspend<ChatException.InvalidArgument>("send to an empty chat id") {
            alice.client.send("", Content(text = "x"))
        }
        assertEquals(Code.INVALID_ARGUMENT, local.code)

        // The event stream has one reader.
        val taken = assertThrowsSuspend<ChatException.EventsTaken>("a second events()") {
            alice.client.events()
        }
        assertEquals(Code.FAILED_PRECONDITION, taken.code)

        // A queued send the server refuses for good ends as a typed SendResult.
        val key = alice.client.send(unknown, Content(text = "to nowhere")).clientMsgId
        when (val o = alice.sendResult(key).outcome) {
            is SendOutcome.Failed -> assertEquals(Code.NOT_FOUND, o.code, "$o")
            is SendOutcome.Sent -> fail("a send to an unknown chat was stored: $o")
        }
        assertTrue(
            alice.client.pendingSends().any { it.clientMsgId == key && it.failure?.code == Code.NOT_FOUND },
            "the refused send stays in pendingSends as failed",
        )
        assertTrue(alice.client.discardFailed(key))
    }
}

/** Like JUnit's assertThrows, for suspending code. */
suspend inline fun <reified T : Throwable> assertThrowsSuspend(what: String, noinline block: suspend () -> Any?): T {
    val r = try {
        block()
    } catch (e: Throwable) {
        if (e is T) return e
        throw AssertionError("$what: expected ${T::class.simpleName}, got $e", e)
    }
    throw AssertionError("$what: expected ${T::class.simpleName}, got a result: $r")
}
