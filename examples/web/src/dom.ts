// A tiny element builder: the page is plain DOM, no framework.

export type Child = Node | string | number | null | undefined | false;
type Props = Record<string, unknown>;

/** `h("button", { class: "x", testid: "send", onclick }, "Send")`. `testid` becomes
 *  `data-testid`, `data` an object of `data-*` attributes, `on*` functions listeners. */
export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  props: Props = {},
  ...children: (Child | Child[])[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "testid") el.dataset.testid = String(value);
    else if (key === "data") {
      for (const [k, v] of Object.entries(value as Record<string, unknown>)) {
        if (v !== undefined && v !== null) el.dataset[k] = String(v);
      }
    } else if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2), value as EventListener);
    } else if (key === "value" || key === "disabled" || key === "hidden") {
      (el as unknown as Record<string, unknown>)[key] = value;
    } else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

function append(el: Node, children: (Child | Child[])[]): void {
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.appendChild(typeof child === "object" ? child : document.createTextNode(String(child)));
  }
}

/** Replaces all children of `el`. */
export function fill(el: Element, ...children: (Child | Child[])[]): void {
  el.replaceChildren();
  append(el, children);
}

/** "14:03" today, "Mon 14:03" this week, else "3 Jan". */
export function shortTime(ms: number): string {
  if (!ms) return "";
  const d = new Date(ms);
  const now = new Date();
  const hm = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  if (d.toDateString() === now.toDateString()) return hm;
  if (now.getTime() - ms < 6 * 24 * 3600 * 1000) {
    return `${d.toLocaleDateString([], { weekday: "short" })} ${hm}`;
  }
  return d.toLocaleDateString([], { day: "numeric", month: "short" });
}

/** "just now", "5 min ago", "today at 14:03", "on 3 Jan at 14:03". */
export function lastSeen(ms: number, now = Date.now()): string {
  const ago = now - ms;
  if (ago < 60_000) return "just now";
  if (ago < 3600_000) return `${Math.floor(ago / 60_000)} min ago`;
  const d = new Date(ms);
  const hm = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  if (d.toDateString() === new Date(now).toDateString()) return `today at ${hm}`;
  return `on ${d.toLocaleDateString([], { day: "numeric", month: "short" })} at ${hm}`;
}
