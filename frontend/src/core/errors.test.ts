import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

import { describe, expect, it } from "vitest";

import { closeMessage, errorMessage, hasCloseMessage, hasErrorMessage, httpErrorMessage } from "./errors";

// Read the protocol doc itself: a code added there without a message here fails.
const DOC = readFileSync(fileURLToPath(new URL("../../../docs/protocol.md", import.meta.url)), "utf8");

/** The first-column values of the table(s) in the section whose heading starts with `## N.`. */
function firstColumn(section: number): string[] {
  const lines = DOC.split("\n");
  const start = lines.findIndex((l) => l.startsWith(`## ${section}.`));
  if (start < 0) throw new Error(`no section ${section} in docs/protocol.md`);
  const end = lines.findIndex((l, i) => i > start && l.startsWith("## "));
  const codes: string[] = [];
  for (const line of lines.slice(start + 1, end < 0 ? undefined : end)) {
    const m = /^\|\s*`?([^|`]+?)`?\s*\|/.exec(line);
    if (!m) continue;
    const cell = m[1]!.trim();
    if (/^-+$/.test(cell) || cell === "code") continue; // separator and header rows
    codes.push(cell);
  }
  return codes;
}

describe("errors.ts covers docs/protocol.md", () => {
  const errorCodes = firstColumn(4);
  const closeCodes = firstColumn(5);

  it("finds the tables", () => {
    expect(errorCodes).toContain("busy");
    expect(errorCodes).toContain("state_lost");
    expect(errorCodes.length).toBeGreaterThanOrEqual(8);
    expect(closeCodes).toContain("4401");
    expect(closeCodes.length).toBeGreaterThanOrEqual(8);
  });

  it("has a message for every error code of §4", () => {
    const missing = errorCodes.filter((c) => !hasErrorMessage(c));
    expect(missing).toEqual([]);
    for (const c of errorCodes) {
      const text = errorMessage(c);
      expect(text.length).toBeGreaterThan(15);
      expect(text).not.toBe(c);
    }
  });

  it("has a message for every close code of §5 (and 1006, 1011 named in its text)", () => {
    const codes = closeCodes.map(Number);
    expect(codes.every(Number.isInteger)).toBe(true);
    const missing = [...codes, 1006, 1011].filter((c) => !hasCloseMessage(c));
    expect(missing).toEqual([]);
  });
});

describe("messages", () => {
  it("counts down busy and rate_limited", () => {
    expect(errorMessage("busy", { retryInS: 2.2 })).toBe("The service is busy. Retrying in 3 s…");
    expect(errorMessage("rate_limited", { retryInS: 1 })).toContain("Retrying in 1 s…");
  });
  it("names the running answer for busy with a message_id", () => {
    expect(errorMessage("busy", { runningAnswer: true })).toContain("Another answer is still running");
  });
  it("has the required texts", () => {
    expect(errorMessage("upstream_unavailable")).toBe("No AI worker could finish this answer. Try again.");
    expect(closeMessage(4401, "bad signature")).toBe("Your sign-in was refused: bad signature. Enter a valid token.");
  });
  it("never shows only a raw code for an unknown one", () => {
    expect(errorMessage("brand_new")).toMatch(/^The server reported a problem/);
    expect(closeMessage(4999)).toContain("4999");
  });
  it("explains REST failures", () => {
    expect(httpErrorMessage(409, "an answer is in progress; stop it first")).toBe("An answer is in progress; stop it first.");
    expect(httpErrorMessage(401, "bad token")).toContain("refused");
  });
});
