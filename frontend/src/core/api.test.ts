import { describe, expect, it } from "vitest";

import { ApiError, createApi, sessionTitle, sortSessions, type FetchLike } from "./api";
import { chatUrl, defaultEndpoints, mergeConfig } from "./config";

interface Call {
  url: string;
  init: RequestInit | undefined;
}

function fakeFetch(respond: (call: Call) => Response): { fetch: FetchLike; calls: Call[] } {
  const calls: Call[] = [];
  return {
    calls,
    fetch: async (url, init) => {
      const call = { url, init };
      calls.push(call);
      return respond(call);
    },
  };
}

const json = (status: number, body: unknown) =>
  new Response(status === 204 ? null : JSON.stringify(body), { status, headers: { "Content-Type": "application/json" } });

const session = { session_id: "s-1", title: "", created_at: "2025-01-01T00:00:00Z", last_seen: "2025-01-02T00:00:00Z", answering: false };

describe("api", () => {
  it("sends the bearer token and, in dev mode, user_id", async () => {
    const { fetch, calls } = fakeFetch(() => json(200, { sessions: [session] }));
    const api = createApi("/api/", fetch, { token: "dev-token", userId: "alice" });
    const list = await api.listSessions();
    expect(list).toEqual([session]);
    expect(calls[0]!.url).toBe("/api/sessions?user_id=alice");
    expect((calls[0]!.init!.headers as Record<string, string>).Authorization).toBe("Bearer dev-token");
  });

  it("info needs no auth", async () => {
    const { fetch, calls } = fakeFetch(() => json(200, { protocol: 1, node_id: "g1", auth_dev_mode: true }));
    const info = await createApi("http://h:8080/api", fetch, { token: "t" }).info();
    expect(info.auth_dev_mode).toBe(true);
    expect(calls[0]!.url).toBe("http://h:8080/api/info");
    expect((calls[0]!.init!.headers as Record<string, string>).Authorization).toBeUndefined();
  });

  it("creates, renames, deletes and reads history with the right methods and bodies", async () => {
    const { fetch, calls } = fakeFetch((c) => {
      if (c.init?.method === "DELETE") return json(204, null);
      if (c.url.includes("/history")) return json(200, { type: "history", session_id: "s-1", messages: [{ message_id: "u_1", role: "user", text: "q" }] });
      return json(c.init?.method === "POST" ? 201 : 200, session);
    });
    const api = createApi("/api", fetch, { token: "jwt" });
    await api.createSession();
    await api.renameSession("s-1", "My chat");
    await api.deleteSession("s-1");
    const items = await api.history("s-1");
    expect(calls.map((c) => `${c.init?.method} ${c.url}`)).toEqual([
      "POST /api/sessions",
      "PATCH /api/sessions/s-1",
      "DELETE /api/sessions/s-1",
      "GET /api/sessions/s-1/history?limit=200",
    ]);
    expect(JSON.parse(calls[1]!.init!.body as string)).toEqual({ title: "My chat" });
    expect(items[0]!.text).toBe("q");
  });

  it("turns error statuses into ApiError with the detail", async () => {
    const { fetch } = fakeFetch(() => json(409, { detail: "an answer is in progress; stop it first" }));
    const err = await createApi("/api", fetch, { token: "t" }).deleteSession("s-1").catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ApiError);
    expect((err as ApiError).status).toBe(409);
    expect((err as ApiError).detail).toBe("an answer is in progress; stop it first");
  });

  it("reports an unreachable server as status 0", async () => {
    const api = createApi("/api", async () => Promise.reject(new TypeError("Failed to fetch")), { token: "t" });
    const err = (await api.listSessions().catch((e: unknown) => e)) as ApiError;
    expect(err.status).toBe(0);
  });

  it("sorts sessions by newest activity and names untitled ones", () => {
    const a = { ...session, session_id: "a", last_seen: "2025-01-01T00:00:00Z" };
    const b = { ...session, session_id: "b", last_seen: "2025-03-01T00:00:00Z" };
    expect(sortSessions([a, b]).map((s) => s.session_id)).toEqual(["b", "a"]);
    expect(sessionTitle(a)).toBe("New chat");
    expect(sessionTitle({ ...a, title: "Hi" })).toBe("Hi");
  });
});

describe("config", () => {
  it("defaults to the page's origin", () => {
    expect(defaultEndpoints({ protocol: "https:", host: "chat.example:8443" })).toEqual({
      wsUrl: "wss://chat.example:8443/ws/chat",
      apiBase: "/api",
    });
  });
  it("lets config.json override, ignoring junk", () => {
    const d = defaultEndpoints({ protocol: "http:", host: "h" });
    expect(mergeConfig(d, { wsUrl: "ws://127.0.0.1:8080/ws/chat" })).toEqual({ wsUrl: "ws://127.0.0.1:8080/ws/chat", apiBase: "/api" });
    expect(mergeConfig(d, "nope")).toEqual(d);
    expect(mergeConfig(d, { apiBase: 3 })).toEqual(d);
  });
  it("puts the session and user in the URL but never the token", () => {
    expect(chatUrl("ws://h/ws/chat", "s-1", "alice")).toBe("ws://h/ws/chat?session_id=s-1&user_id=alice");
    expect(chatUrl("ws://h/ws/chat", "s-1")).toBe("ws://h/ws/chat?session_id=s-1");
  });
});
