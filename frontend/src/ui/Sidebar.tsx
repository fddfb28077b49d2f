import { useState, type KeyboardEvent } from "react";

import { sessionTitle, type SessionInfo } from "../core/api";

function SessionItem({
  session,
  active,
  onOpen,
  onRename,
  onDelete,
}: {
  session: SessionInfo;
  active: boolean;
  onOpen: () => void;
  onRename: (title: string) => void;
  onDelete: () => void;
}) {
  const [editing, setEditing] = useState(false);
  const [draft, setDraft] = useState("");
  const title = sessionTitle(session);

  const commit = (): void => {
    const t = draft.trim().slice(0, 100);
    setEditing(false);
    if (t && t !== session.title) onRename(t);
  };
  const onKey = (e: KeyboardEvent<HTMLInputElement>): void => {
    if (e.key === "Enter") {
      e.preventDefault();
      commit();
    } else if (e.key === "Escape") {
      setEditing(false);
    }
  };

  return (
    <li className={`session${active ? " active" : ""}`} data-testid="session-item" data-session-id={session.session_id} data-active={active ? "true" : "false"}>
      {editing ? (
        <input
          className="session-title-input"
          aria-label="Chat title"
          data-testid="rename-input"
          value={draft}
          maxLength={100}
          autoFocus
          onChange={(e) => setDraft(e.target.value)}
          onKeyDown={onKey}
          onBlur={commit}
        />
      ) : (
        <button type="button" className="session-open" onClick={onOpen} aria-current={active ? "page" : undefined} title={title}>
          <span className="session-title">{title}</span>
          {session.answering ? <span className="session-answering" aria-label="answering">●</span> : null}
        </button>
      )}
      <button
        type="button"
        className="icon"
        data-testid="rename-session"
        aria-label={`Rename ${title}`}
        title="Rename"
        onClick={() => {
          setDraft(session.title || "");
          setEditing(true);
        }}
      >
        ✎
      </button>
      <button type="button" className="icon danger" data-testid="delete-session" aria-label={`Delete ${title}`} title="Delete" onClick={onDelete}>
        ×
      </button>
    </li>
  );
}

export function Sidebar({
  sessions,
  currentId,
  userLabel,
  open,
  showNew,
  onNew,
  onOpen,
  onRename,
  onDelete,
  onSignOut,
  onClose,
}: {
  sessions: readonly SessionInfo[];
  currentId: string | null;
  userLabel: string;
  open: boolean;
  /** false on narrow screens, where the button sits in the top bar instead. */
  showNew: boolean;
  onNew: () => void;
  onOpen: (id: string) => void;
  onRename: (id: string, title: string) => void;
  onDelete: (id: string) => void;
  onSignOut: () => void;
  onClose: () => void;
}) {
  return (
    <>
      <div className={`scrim${open ? " open" : ""}`} onClick={onClose} aria-hidden="true" />
      <aside className={`sidebar${open ? " open" : ""}`} aria-label="Chats">
        {showNew ? (
          <div className="sidebar-head">
            <button type="button" className="new-session" data-testid="new-session" onClick={onNew}>
              + New chat
            </button>
          </div>
        ) : (
          <div className="sidebar-head sidebar-title">Chats</div>
        )}
        <ul className="session-list" data-testid="session-list">
          {sessions.map((s) => (
            <SessionItem
              key={s.session_id}
              session={s}
              active={s.session_id === currentId}
              onOpen={() => onOpen(s.session_id)}
              onRename={(t) => onRename(s.session_id, t)}
              onDelete={() => onDelete(s.session_id)}
            />
          ))}
        </ul>
        <div className="sidebar-foot">
          <span className="user-label" title={userLabel}>
            {userLabel}
          </span>
          <button type="button" data-testid="sign-out" onClick={onSignOut}>
            Sign out
          </button>
        </div>
      </aside>
    </>
  );
}
