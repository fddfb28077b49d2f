// window.__chat: a read-only view for browser tests and debugging.

import type { ChatClient, ConnectionState, MessageStatus } from "../core/client";

export interface DebugSnapshot {
  sessionId: string | null;
  userId: string | null;
  nodeId: string | null;
  connection: ConnectionState;
  /** Every connection state the client entered since it was set, in order (last 50). */
  connectionLog: ConnectionState[];
  messages: { messageId: string | null; role: "user" | "assistant"; text: string; status: MessageStatus; lastSeq: number }[];
}

const current: {
  client: ChatClient | null;
  sessionId: string | null;
  userId: string | null;
  log: ConnectionState[];
  unsubscribe: (() => void) | null;
} = {
  client: null,
  sessionId: null,
  userId: null,
  log: [],
  unsubscribe: null,
};

export function setDebugState(client: ChatClient | null, sessionId: string | null, userId: string | null): void {
  if (client !== current.client) {
    current.unsubscribe?.();
    current.unsubscribe = null;
    current.log = [];
    if (client) {
      // Recorded as the client changes, not as the page renders: a reconnect can be over
      // within one frame, so the rendered banner may never show it.
      current.unsubscribe = client.subscribe(() => {
        const state = client.getSnapshot().connection;
        if (current.log[current.log.length - 1] !== state) current.log = [...current.log, state].slice(-50);
      });
    }
  }
  current.client = client;
  current.sessionId = sessionId;
  current.userId = userId;
}

export function debugSnapshot(): DebugSnapshot {
  const s = current.client?.getSnapshot();
  return {
    sessionId: s?.sessionId ?? current.sessionId,
    userId: s?.userId ?? current.userId,
    nodeId: s?.nodeId ?? null,
    connection: s?.connection ?? (current.sessionId ? "connecting" : "offline"),
    connectionLog: current.log,
    messages: (s?.messages ?? []).map((m) => ({
      messageId: m.messageId,
      role: m.role,
      text: m.text,
      status: m.status,
      lastSeq: m.lastSeq,
    })),
  };
}

declare global {
  interface Window {
    __chat?: { snapshot(): DebugSnapshot };
  }
}

export function installDebugHook(): void {
  Object.defineProperty(window, "__chat", {
    value: Object.freeze({ snapshot: debugSnapshot }),
    writable: false,
    configurable: true,
  });
}
