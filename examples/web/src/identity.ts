// Who the page is: the pasted token (kept in localStorage) and this browser's device id.

const TOKEN_KEY = "chatd.token";
const DEVICE_KEY = "chatd.deviceId";

export function savedToken(): string | null {
  return localStorage.getItem(TOKEN_KEY);
}

export function saveToken(token: string): void {
  localStorage.setItem(TOKEN_KEY, token);
}

export function forgetToken(): void {
  localStorage.removeItem(TOKEN_KEY);
}

/** Generated once per browser and kept: the server tracks delivery per device. */
export function deviceId(): string {
  let id = localStorage.getItem(DEVICE_KEY);
  if (!id) {
    id = `web-${randomHex(12)}`;
    localStorage.setItem(DEVICE_KEY, id);
  }
  return id;
}

export function randomHex(bytes: number): string {
  const buf = crypto.getRandomValues(new Uint8Array(bytes));
  return Array.from(buf, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** The user a token is for (its `sub`), and when it expires. The server checks the
 *  signature; the page only reads the claims to show who is signed in. */
export function readToken(token: string): { userId: string; expiresAt: number | null } {
  const parts = token.trim().split(".");
  if (parts.length !== 3) throw new Error("That is not a JWT (expected three dot-separated parts).");
  let claims: { sub?: unknown; exp?: unknown };
  try {
    const b64 = parts[1].replace(/-/g, "+").replace(/_/g, "/");
    const json = new TextDecoder().decode(
      Uint8Array.from(atob(b64.padEnd(b64.length + ((4 - (b64.length % 4)) % 4), "=")), (c) =>
        c.charCodeAt(0),
      ),
    );
    claims = JSON.parse(json);
  } catch {
    throw new Error("The token's claims cannot be read.");
  }
  if (typeof claims.sub !== "string" || !claims.sub) throw new Error("The token names no user (sub).");
  const exp = typeof claims.exp === "number" ? claims.exp * 1000 : null;
  if (exp !== null && exp < Date.now()) throw new Error("The token has expired: mint a new one.");
  return { userId: claims.sub, expiresAt: exp };
}
