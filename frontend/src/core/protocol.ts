// Frame shapes of wire protocol v1 (docs/protocol.md §2). Ids are opaque strings.

export const PROTOCOL_VERSION = 1;

export type StreamStatus = "pending" | "streaming" | "done";
export type FinishReason = "stop" | "length" | "cancelled" | "error";

export interface WelcomeStream {
  message_id: string;
  last_seq: number;
  status: StreamStatus;
}

export interface HistoryItem {
  message_id: string;
  role: "user" | "assistant";
  text: string;
  created_at?: string;
}

export interface WelcomeFrame {
  type: "welcome";
  protocol: number;
  session_id: string;
  user_id: string;
  node_id: string;
  server_time?: string;
  streams?: WelcomeStream[];
}
export interface AckFrame {
  type: "ack";
  client_msg_id: string | null;
  message_id: string;
}
export interface ChunkFrame {
  type: "chunk";
  message_id: string;
  seq: number;
  delta: string;
}
export interface DoneFrame {
  type: "done";
  message_id: string;
  last_seq: number;
  finish_reason: FinishReason | string;
  usage?: { prompt_tokens: number; completion_tokens: number };
}
export interface HistoryFrame {
  type: "history";
  session_id: string;
  messages: HistoryItem[];
}
export interface ErrorFrame {
  type: "error";
  code: string;
  message?: string;
  client_msg_id?: string | null;
  message_id?: string | null;
  retry_after?: number | null;
}
export interface PongFrame {
  type: "pong";
  ts: unknown;
}

export type ServerFrame =
  | WelcomeFrame
  | AckFrame
  | ChunkFrame
  | DoneFrame
  | HistoryFrame
  | ErrorFrame
  | PongFrame;

export interface ChatFrame {
  type: "chat";
  text: string;
  client_msg_id: string;
}
export interface ResumeFrame {
  type: "resume";
  message_id: string;
  after_seq: number;
}
export interface CancelFrame {
  type: "cancel";
  message_id: string;
}
export interface HistoryRequestFrame {
  type: "history";
  limit: number;
}
export interface PingFrame {
  type: "ping";
  ts: number;
}
export type ClientFrame = ChatFrame | ResumeFrame | CancelFrame | HistoryRequestFrame | PingFrame;

const isObj = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v);
const isStr = (v: unknown): v is string => typeof v === "string";
const isInt = (v: unknown): v is number => typeof v === "number" && Number.isInteger(v);

/**
 * Parse one text frame; null for anything that is not a well-formed server frame we
 * know (unknown types are ignored, as the protocol asks).
 */
export function parseServerFrame(data: unknown): ServerFrame | null {
  if (!isStr(data)) return null;
  let f: unknown;
  try {
    f = JSON.parse(data);
  } catch {
    return null;
  }
  if (!isObj(f) || !isStr(f.type)) return null;
  switch (f.type) {
    case "welcome":
      return isStr(f.session_id) ? (f as unknown as WelcomeFrame) : null;
    case "ack":
      return isStr(f.message_id) ? (f as unknown as AckFrame) : null;
    case "chunk":
      return isStr(f.message_id) && isInt(f.seq) && isStr(f.delta) ? (f as unknown as ChunkFrame) : null;
    case "done":
      return isStr(f.message_id) && isInt(f.last_seq) ? (f as unknown as DoneFrame) : null;
    case "history":
      return Array.isArray(f.messages) ? (f as unknown as HistoryFrame) : null;
    case "error":
      return isStr(f.code) ? (f as unknown as ErrorFrame) : null;
    case "pong":
      return f as unknown as PongFrame;
    default:
      return null;
  }
}

/** The user turn of an answer has the answer's id with `u_` for `m_` (§2.2 notes). */
export function userTurnId(answerId: string): string | null {
  return answerId.startsWith("m_") ? `u_${answerId.slice(2)}` : null;
}
