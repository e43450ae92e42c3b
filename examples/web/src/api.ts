// The chat.v1 service over gRPC-web, with the caller's token and device on every call.

import { Code, ConnectError, createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { ChatService } from "./gen/chat/v1/chat_pb";

export type Api = Client<typeof ChatService>;

export function connectApi(baseUrl: string, token: string, deviceId: string): Api {
  const identify: Interceptor = (next) => (req) => {
    req.header.set("authorization", `Bearer ${token}`);
    req.header.set("x-device-id", deviceId);
    return next(req);
  };
  const transport = createGrpcWebTransport({ baseUrl, interceptors: [identify] });
  return createClient(ChatService, transport);
}

/** A failed call as the page shows it: the status name and the server's own message. */
export interface Failure {
  code: Code;
  message: string;
}

export function failure(e: unknown): Failure {
  const err = ConnectError.from(e);
  return { code: err.code, message: err.rawMessage || Code[err.code] };
}

/** Worth trying again with the same request: the server was away or busy, not refusing. */
export function isTransient(code: Code): boolean {
  return (
    code === Code.Unavailable ||
    code === Code.Unknown || // fetch itself failed (connection refused, reset)
    code === Code.DeadlineExceeded ||
    code === Code.ResourceExhausted ||
    code === Code.Aborted
  );
}

export { Code };
