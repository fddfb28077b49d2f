// window.__chat: a read-only view for browser tests and debugging.

import type { ChatClient, ConnectionState, MessageStatus } from "../core/client";

export interface DebugSnapshot {
  sessionId: string | null;
  userId: string | null;
  nodeId: string | null;
  connection: ConnectionState;
  messages: { messageId: string | null; role: "user" | "assistant"; text: string; status: MessageStatus; lastSeq: number }[];
}

const current: { client: ChatClient | null; sessionId: string | null; userId: string | null } = {
  client: null,
  sessionId: null,
  userId: null,
};

export function setDebugState(client: ChatClient | null, sessionId: string | null, userId: string | null): void {
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
