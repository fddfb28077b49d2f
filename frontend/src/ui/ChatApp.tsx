import { useCallback, useEffect, useLayoutEffect, useMemo, useRef, useState, type ReactNode } from "react";

import { ApiError, createApi, sessionTitle, sortSessions, type SessionInfo } from "../core/api";
import { ChatClient, type ChatMessage } from "../core/client";
import { chatUrl, newSessionId, type Endpoints } from "../core/config";
import { httpErrorMessage } from "../core/errors";
import { ConnectionBanner } from "./Banner";
import { Composer } from "./Composer";
import { setDebugState } from "./debug";
import { useChatSnapshot, useMediaQuery, useNow } from "./hooks";
import { MessageView } from "./MessageView";
import { Sidebar } from "./Sidebar";
import { loadCurrentSession, saveCurrentSession, type Credentials } from "./storage";

const browserClock = {
  now: () => Date.now(),
  setTimeout: (fn: () => void, ms: number): unknown => window.setTimeout(fn, ms),
  clearTimeout: (h: unknown): void => window.clearTimeout(h as number),
};

function randomBytes(n: number): Uint8Array {
  return crypto.getRandomValues(new Uint8Array(n));
}

function newClientMsgId(): string {
  return `c-${Array.from(randomBytes(8), (b) => b.toString(16).padStart(2, "0")).join("")}`;
}

/** A message whose text changes with the clock (countdowns, slow first chunk). */
function ticks(m: ChatMessage): boolean {
  return (m.status === "pending" && m.waitingSince !== null) || (m.notice?.retryAt ?? null) !== null;
}

function ChatPane({
  client,
  title,
  onActivity,
  onRefused,
  menuButton,
  topActions,
}: {
  client: ChatClient;
  title: string;
  onActivity: () => void;
  onRefused: (text: string) => void;
  menuButton: ReactNode;
  topActions: ReactNode;
}) {
  const snap = useChatSnapshot(client);
  const ticking = snap.connection === "reconnecting" || snap.messages.some(ticks);
  const now = useNow(ticking);
  const log = useRef<HTMLDivElement>(null);
  const stick = useRef(true);

  // Back to sign-in when the server refuses the token (4401).
  useEffect(() => {
    if (snap.connection === "refused") onRefused(snap.closeText ?? "Your sign-in was refused. Enter a valid token.");
  }, [snap.connection, snap.closeText, onRefused]);

  // The session list changes when we connect (a new session) and when an answer ends.
  const prevBusy = useRef(snap.busy);
  useEffect(() => {
    if (snap.connection === "open") onActivity();
  }, [snap.connection, onActivity]);
  useEffect(() => {
    if (prevBusy.current !== snap.busy) onActivity();
    prevBusy.current = snap.busy;
  }, [snap.busy, onActivity]);

  useLayoutEffect(() => {
    const el = log.current;
    if (el && stick.current) el.scrollTop = el.scrollHeight;
  }, [snap.messages]);

  const onScroll = (): void => {
    const el = log.current;
    if (el) stick.current = el.scrollHeight - el.scrollTop - el.clientHeight < 64;
  };

  const open = snap.connection === "open";
  const disabledReason = !open ? "Not connected" : snap.busy ? "Wait for the answer to finish" : null;

  return (
    <main className="chat">
      <header className="topbar">
        {menuButton}
        <h1 className="chat-title" title={title}>
          {title}
        </h1>
        {snap.nodeId ? <span className="node" title="Gateway">{snap.nodeId}</span> : null}
        {topActions}
      </header>
      <ConnectionBanner snap={snap} now={now} onRetry={() => client.retryNow()} />
      {snap.notices.length > 0 ? (
        <div className="notices">
          {snap.notices.map((n) => (
            <div key={n.id} className="notice" role="alert">
              <span>{n.text}</span>
              <button type="button" className="icon" aria-label="Dismiss" onClick={() => client.dismissNotice(n.id)}>
                ×
              </button>
            </div>
          ))}
        </div>
      ) : null}
      <div className="log" ref={log} onScroll={onScroll}>
        {snap.messages.length === 0 ? <p className="empty">Ask anything to start the conversation.</p> : null}
        {snap.messages.map((m) => (
          <MessageView key={m.key} message={m} now={ticks(m) ? now : 0} />
        ))}
      </div>
      <Composer
        canSend={open && !snap.busy}
        busy={snap.busy}
        disabledReason={disabledReason}
        onSend={(text) => {
          stick.current = true;
          client.sendChat(text);
        }}
        onStop={() => client.cancel()}
      />
    </main>
  );
}

export function ChatApp({
  endpoints,
  creds,
  devMode,
  onSignOut,
  onRefused,
  themeButton,
}: {
  endpoints: Endpoints;
  creds: Credentials;
  devMode: boolean;
  onSignOut: () => void;
  onRefused: (text: string) => void;
  themeButton: ReactNode;
}) {
  const userId = devMode ? creds.userId : null;
  const api = useMemo(() => createApi(endpoints.apiBase, (u, i) => fetch(u, i), { token: creds.token, userId }), [endpoints.apiBase, creds.token, userId]);
  const [sessions, setSessions] = useState<SessionInfo[]>([]);
  const [currentId, setCurrentId] = useState<string | null>(null);
  const [client, setClient] = useState<ChatClient | null>(null);
  const [notice, setNotice] = useState<string | null>(null);
  const [sidebarOpen, setSidebarOpen] = useState(false);
  const clientRef = useRef<ChatClient | null>(null);
  const loadSeq = useRef(0);

  /** true when handled as a refusal (401): the caller stops. */
  const report = useCallback(
    (err: unknown): boolean => {
      if (err instanceof ApiError && err.status === 401) {
        onRefused(httpErrorMessage(401, err.detail));
        return true;
      }
      if (err instanceof ApiError) setNotice(httpErrorMessage(err.status, err.detail));
      else setNotice(String(err));
      return false;
    },
    [onRefused],
  );

  const refreshSessions = useCallback(async (): Promise<SessionInfo[] | null> => {
    try {
      const list = sortSessions(await api.listSessions());
      setSessions(list);
      return list;
    } catch (err) {
      // An unreachable or not-yet-implemented list is shown as a notice; chat still works.
      if (err instanceof ApiError && err.status === 401) report(err);
      return null;
    }
  }, [api, report]);

  const openSession = useCallback(
    async (id: string, firstPrompt?: string) => {
      const seq = ++loadSeq.current;
      clientRef.current?.dispose();
      clientRef.current = null;
      setClient(null);
      setCurrentId(id);
      saveCurrentSession(id);
      setSidebarOpen(false);
      setDebugState(null, id, userId);
      let history: Awaited<ReturnType<typeof api.history>> = [];
      try {
        history = await api.history(id);
      } catch (err) {
        if (err instanceof ApiError && err.status === 404) history = []; // a session with nothing yet
        else if (report(err)) return;
      }
      if (seq !== loadSeq.current) return; // another session was chosen meanwhile
      const c = new ChatClient({
        url: chatUrl(endpoints.wsUrl, id, userId),
        token: creds.token,
        sessionId: id,
        userId,
        socket: (url, protocols) => new WebSocket(url, protocols),
        clock: browserClock,
        random: Math.random,
        newId: newClientMsgId,
        history,
      });
      if (firstPrompt) c.sendChat(firstPrompt); // sent once the socket is welcomed
      clientRef.current = c;
      setClient(c);
      setDebugState(c, id, userId);
      c.connect();
    },
    [api, creds.token, endpoints.wsUrl, report, userId],
  );

  const createAndOpen = useCallback(async (firstPrompt?: string) => {
    let id: string;
    try {
      const s = await api.createSession();
      id = s.session_id;
      setSessions((list) => [s, ...list.filter((x) => x.session_id !== id)]);
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) return void report(err);
      // Without the REST endpoint the WebSocket creates the session on connect.
      id = newSessionId(randomBytes);
    }
    await openSession(id, firstPrompt);
  }, [api, openSession, report]);

  // Start: the remembered session if it still exists, else the newest; with none, an
  // empty screen (a chat is created by "New chat" or by the first prompt).
  const booted = useRef(false);
  useEffect(() => {
    if (booted.current) return;
    booted.current = true;
    void (async () => {
      const list = await refreshSessions();
      const stored = loadCurrentSession();
      if (stored && (list === null || list.some((s) => s.session_id === stored))) return openSession(stored);
      const first = list?.[0];
      if (first) return openSession(first.session_id);
      setDebugState(null, null, userId);
    })();
  }, [refreshSessions, openSession, userId]);

  useEffect(
    () => () => {
      clientRef.current?.dispose();
      clientRef.current = null;
      setDebugState(null, null, null);
    },
    [],
  );

  const onActivity = useCallback(() => void refreshSessions(), [refreshSessions]);

  const closeSession = (): void => {
    loadSeq.current++;
    clientRef.current?.dispose();
    clientRef.current = null;
    setClient(null);
    setCurrentId(null);
    saveCurrentSession(null);
    setDebugState(null, null, userId);
  };

  const onRename = async (id: string, title: string): Promise<void> => {
    try {
      const s = await api.renameSession(id, title);
      setSessions((list) => list.map((x) => (x.session_id === id ? { ...x, ...s } : x)));
    } catch (err) {
      report(err);
    }
  };

  const onDelete = async (id: string): Promise<void> => {
    const s = sessions.find((x) => x.session_id === id);
    const name = s ? sessionTitle(s) : id;
    if (!window.confirm(`Delete the chat “${name}”? This cannot be undone.`)) return;
    try {
      await api.deleteSession(id);
    } catch (err) {
      if (!(err instanceof ApiError && err.status === 404)) {
        report(err);
        return;
      }
    }
    const list = (await refreshSessions()) ?? sessions.filter((x) => x.session_id !== id);
    const rest = list.filter((x) => x.session_id !== id);
    setSessions(rest);
    if (id === currentId) {
      const next = rest[0];
      if (next) await openSession(next.session_id);
      else closeSession();
    }
  };

  const narrow = useMediaQuery("(max-width: 760px)");
  const current = sessions.find((s) => s.session_id === currentId);
  const title = current ? sessionTitle(current) : "New chat";
  // On a narrow screen the sidebar is a drawer; "New chat" then sits in the top bar.
  const menuButton = (
    <button type="button" className="icon menu" aria-label="Chats" aria-expanded={sidebarOpen} onClick={() => setSidebarOpen((o) => !o)}>
      ☰
    </button>
  );
  const topNewButton = narrow ? (
    <button type="button" className="new-session top-new" data-testid="new-session" aria-label="New chat" onClick={() => void createAndOpen()}>
      + New
    </button>
  ) : null;
  const topActions = (
    <>
      {topNewButton}
      {themeButton}
    </>
  );

  return (
    <div className="app">
      <Sidebar
        sessions={sessions}
        currentId={currentId}
        userLabel={userId ?? "Signed in"}
        open={sidebarOpen}
        showNew={!narrow}
        onNew={() => void createAndOpen()}
        onOpen={(id) => (id === currentId ? setSidebarOpen(false) : void openSession(id))}
        onRename={(id, t) => void onRename(id, t)}
        onDelete={(id) => void onDelete(id)}
        onSignOut={onSignOut}
        onClose={() => setSidebarOpen(false)}
      />
      <div className="main-col">
        {notice ? (
          <div className="notice app-notice" role="alert">
            <span>{notice}</span>
            <button type="button" className="icon" aria-label="Dismiss" onClick={() => setNotice(null)}>
              ×
            </button>
          </div>
        ) : null}
        {client ? (
          <ChatPane key={currentId ?? ""} client={client} title={title} onActivity={onActivity} onRefused={onRefused} menuButton={menuButton} topActions={topActions} />
        ) : (
          <main className="chat">
            <header className="topbar">
              {menuButton}
              <h1 className="chat-title">{title}</h1>
              {topActions}
            </header>
            {currentId ? (
              <div className="banner banner-connecting" data-testid="connection-banner" data-state="connecting" role="status">
                Loading the chat…
              </div>
            ) : (
              <div className="banner" data-testid="connection-banner" data-state="offline" hidden>
                No chat open
              </div>
            )}
            <div className="log">
              {currentId ? null : <p className="empty">Start a new chat: ask anything below.</p>}
            </div>
            <Composer
              canSend={!currentId}
              busy={false}
              disabledReason={currentId ? "Loading the chat" : null}
              onSend={(text) => void createAndOpen(text)}
              onStop={() => {}}
            />
          </main>
        )}
      </div>
    </div>
  );
}
