package chat.sdk.test

import chat.sdk.ChatClient
import chat.sdk.EventStream

// The binding's own `close()` of ChatClient (async: save/ack, end the stream, stop
// reconnecting) and of EventStream (end every waiting and later `next()`) clash in Kotlin with
// `AutoCloseable.close()` that uniffi gives every object (uniffi-rs#2955), so the Kotlin
// bindings rename them (sdk-ffi/uniffi.toml, [bindings.kotlin.rename]). These two wrappers are
// the only place the tests name them.

/** `ChatClient.close()` of the Rust API. */
suspend fun ChatClient.closeClient() = shutdown()

/** `EventStream.close()` of the Rust API. */
fun EventStream.closeStream() = stop()
