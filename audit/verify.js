#!/usr/bin/env node
// A second, independent verifier of Baton audit exports, written from audit/FORMAT.md
// alone. Node's standard library only (crypto has SHA-256 and Ed25519).
//
//   node verify.js EXPORT(.jsonl|.csv) --public-key baton-audit-public-key.pem
//   node verify.js --jcs FILE      (prints RFC 8785 of each JSON line: a test aid)
//
// Prints "OK: ..." and exits 0 when the export is intact and ends on a signed
// checkpoint; prints "FAILED: ..." (naming the first bad seq) and exits 1 otherwise.
"use strict";

const crypto = require("node:crypto");
const fs = require("node:fs");

const ZERO = "0".repeat(64);
const EXPORT_FORMATS = ["baton-audit-export/1", "baton-audit-export/2"];
const CSV_COLUMNS = [
  "record", "seq", "prev_hash", "hash", "digest", "occurred_at", "actor_type", "actor_id",
  "actor_label", "verb", "subject_type", "subject_id", "agent_id", "team_id", "run_id",
  "payload", "signed_at", "key_id", "signature", "format",
];
const STRING_FIELDS = ["occurred_at", "actor_type", "actor_label", "verb", "subject_type", "subject_id"];
const ID_FIELDS = ["actor_id", "agent_id", "team_id", "run_id"];
const EVENT_KEYS = [
  "actor_id", "actor_label", "actor_type", "agent_id", "format", "occurred_at", "payload",
  "run_id", "subject_id", "subject_type", "team_id", "verb",
];

const sha256 = (data) => crypto.createHash("sha256").update(data).digest("hex");

// --- RFC 8785 (FORMAT.md section 2, format 2) ------------------------------------------

function jcs(value) {
  if (value === null || typeof value === "boolean") return String(value);
  if (typeof value === "number") {
    if (!Number.isFinite(value)) throw new Error(`${value} is not a finite number`);
    return JSON.stringify(value); // ECMAScript Number::toString; -0 is written 0
  }
  if (typeof value === "string") {
    if (/\p{Surrogate}/u.test(value)) throw new Error("a string holds a lone surrogate");
    return JSON.stringify(value);
  }
  if (Array.isArray(value)) return "[" + value.map(jcs).join(",") + "]";
  if (typeof value === "object") {
    // The default sort compares UTF-16 code units, as RFC 8785 asks.
    const keys = Object.keys(value).sort();
    return "{" + keys.map((k) => jcs(k) + ":" + jcs(value[k])).join(",") + "}";
  }
  throw new Error(`${typeof value} is not JSON`);
}

// --- keys and signatures (FORMAT.md section 4) -----------------------------------------

function loadKeys(pemText) {
  const keys = new Map();
  const found = pemText.match(/-----BEGIN PUBLIC KEY-----[\s\S]*?-----END PUBLIC KEY-----/g) || [];
  for (const pem of found) {
    const key = crypto.createPublicKey(pem);
    if (key.asymmetricKeyType !== "ed25519") continue;
    const raw = Buffer.from(key.export({ format: "jwk" }).x, "base64url");
    keys.set(sha256(raw).slice(0, 16), key);
  }
  return keys;
}

function signed(keys, keyId, signature, message) {
  const key = keys.get(keyId);
  if (!key || !/^[0-9a-f]{128}$/.test(signature)) return false;
  return crypto.verify(null, Buffer.from(message), key, Buffer.from(signature, "hex"));
}

// --- reading the two layouts (FORMAT.md section 5) -------------------------------------

function bodyFromEventLine(line) {
  const start = line.indexOf(',"event":');
  if (start < 0 || line[line.length - 1] !== "}") throw new Error("an event line without its event");
  return line.slice(start + 9, line.length - 1);
}

function checkBody(body) {
  // The bytes are hashed as they are; they must also be an event in its canonical form.
  const event = JSON.parse(body);
  if (event === null || typeof event !== "object" || Array.isArray(event)) {
    throw new Error("the event is not an object");
  }
  const payload = event.payload;
  if (payload === null || typeof payload !== "object" || Array.isArray(payload)) {
    throw new Error("the payload is not an object");
  }
  for (const key of Object.keys(event)) {
    if (!EVENT_KEYS.includes(key)) throw new Error(`the event has an unknown field ${key}`);
  }
  if ("format" in event) {
    if (event.format !== 2) throw new Error(`unknown event format ${JSON.stringify(event.format)}`);
    if (jcs(event) !== body) throw new Error("the event is not in RFC 8785 form");
  }
  return event;
}

function* jsonlRecords(text) {
  const lines = text.split("\n");
  for (let n = 0; n < lines.length; n++) {
    const line = lines[n];
    if (!line.trim()) continue;
    const record = JSON.parse(line);
    if (record.type === "event") record.body = bodyFromEventLine(line);
    yield [n + 1, record];
  }
}

function parseCsv(text) {
  // RFC 4180: quoted fields may hold commas, doubled quotes and line breaks.
  const rows = [];
  let row = [];
  let field = "";
  let quoted = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') { field += '"'; i++; }
      else if (c === '"') quoted = false;
      else field += c;
    } else if (c === '"' && field === "") quoted = true;
    else if (c === ",") { row.push(field); field = ""; }
    else if (c === "\n") { row.push(field); rows.push(row); row = []; field = ""; }
    else if (c === "\r" && text[i + 1] === "\n") continue;
    else field += c;
  }
  if (quoted) throw new Error("a quoted CSV field never ends");
  if (field !== "" || row.length) { row.push(field); rows.push(row); }
  return rows;
}

function csvId(text, name) {
  if (text === "") return "null";
  if (!/^-?(0|[1-9][0-9]*)$/.test(text)) throw new Error(`${name} is not an integer: ${text}`);
  return text;
}

function csvBody(row) {
  // FORMAT.md section 5, CSV: the top-level object in its fixed key order, the payload
  // text verbatim (both formats), "format":2 where the format column says so.
  const parts = [];
  for (const key of EVENT_KEYS) {
    if (key === "format") {
      if (row.format === "2") parts.push('"format":2');
      else if (row.format !== "") throw new Error(`unknown event format ${row.format}`);
    } else if (key === "payload") {
      parts.push('"payload":' + row.payload);
    } else if (ID_FIELDS.includes(key)) {
      parts.push(`"${key}":` + csvId(row[key], key));
    } else {
      parts.push(`"${key}":` + JSON.stringify(row[key]));
    }
  }
  return "{" + parts.join(",") + "}"; // checked as any event's bytes are, in the walk
}

function* csvRecords(text) {
  const rows = parseCsv(text);
  const header = rows[0] || [];
  // Export format 1 had no `format` column; everything else is in the same place.
  const columns = header.length === CSV_COLUMNS.length - 1 ? CSV_COLUMNS.slice(0, -1) : CSV_COLUMNS;
  if (header.join(",") !== columns.join(",")) throw new Error("the CSV header is not the export's");
  for (let n = 1; n < rows.length; n++) {
    const cells = rows[n];
    if (cells.length !== columns.length) throw new Error(`row ${n + 1} does not have the export's columns`);
    const row = { format: "" };
    columns.forEach((name, i) => { row[name] = cells[i]; });
    const seq = Number(row.seq);
    let record;
    if (row.record === "export") {
      record = { type: "export", ...JSON.parse(row.payload), anchor: { seq, hash: row.hash } };
    } else if (row.record === "checkpoint") {
      record = { type: "checkpoint", seq, hash: row.hash, signed_at: row.signed_at, key_id: row.key_id, signature: row.signature };
    } else if (row.record === "event") {
      record = { type: "event", seq, prev_hash: row.prev_hash, hash: row.hash };
      try {
        record.body = csvBody(row);
      } catch (e) {
        record.invalid = e.message; // reported with its seq by the walk
      }
    } else if (row.record === "link") {
      record = { type: "link", seq, digest: row.digest };
    } else {
      throw new Error(`unknown record ${row.record}`);
    }
    yield [n + 1, record];
  }
}

// --- the walk (FORMAT.md section 5, "Verifying an export") -----------------------------

function verify(data, keys) {
  const report = { ok: true, problems: [], events: 0, links: 0, checkpoints: 0, from: 0, to: 0 };
  const bad = (problem) => { report.ok = false; report.problems.push(problem); };

  // The seal: the last line; everything before it is sealed.
  if (data.length === 0 || data[data.length - 1] !== 0x0a) {
    bad("the export does not end with its seal line");
    return report;
  }
  const sealStart = data.lastIndexOf(0x0a, data.length - 2) + 1;
  const sealed = data.subarray(0, sealStart);
  let text;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(sealed);
  } catch (e) {
    bad("the export is not UTF-8");
    return report;
  }

  try {
    const records = text.startsWith("{") ? jsonlRecords(text) : csvRecords(text);
    walk(records, keys, report, bad);
  } catch (e) {
    bad(`the export cannot be read: ${e.message}`);
  }

  const sealLine = data.subarray(sealStart, data.length - 1).toString("utf8");
  let seal;
  try {
    if (sealLine.startsWith("{")) {
      const s = JSON.parse(sealLine);
      if (s.type !== "seal") throw new Error("the last line is not the seal");
      seal = { digest: s.sha256, keyId: s.key_id, signature: s.signature };
    } else {
      const cells = parseCsv(sealLine)[0];
      if (cells[0] !== "seal") throw new Error("the last row is not the seal");
      seal = { digest: cells[3], keyId: cells[17], signature: cells[18] };
    }
  } catch (e) {
    bad(`the export's seal is missing or unreadable (${e.message})`);
    return report;
  }
  if (sha256(sealed) !== seal.digest) {
    bad("the export's bytes do not match its seal: something in it was changed");
  } else if (!signed(keys, seal.keyId, seal.signature, `baton-export/1\n${seal.digest}\n`)) {
    bad("the export's seal is not signed by the given key");
  }
  return report;
}

function walk(records, keys, report, bad) {
  const first = records.next();
  const header = first.done ? {} : first.value[1];
  if (header.type !== "export") return bad("the export has no header");
  if (!EXPORT_FORMATS.includes(header.format)) return bad(`unknown export format ${header.format}`);
  const anchorSeq = Number(header.anchor.seq);
  let running = header.anchor.hash;
  report.from = anchorSeq + 1;
  report.to = Number(header.to_seq);
  const checkpoints = new Map();
  let want = anchorSeq + 1;
  let walking = false;
  for (const [line, record] of records) {
    if (record.type === "checkpoint") {
      if (walking) return bad(`line ${line}: a checkpoint after the events`);
      const seq = Number(record.seq);
      const message = `baton-checkpoint/1\n${seq}\n${record.hash}\n${record.signed_at}\n`;
      if (!signed(keys, record.key_id, record.signature, message)) {
        bad(`checkpoint #${seq} (line ${line}) is not signed by the given key`);
      } else if (checkpoints.has(seq) && checkpoints.get(seq) !== record.hash) {
        bad(`two checkpoints disagree at #${seq}`);
      } else {
        checkpoints.set(seq, record.hash);
      }
      report.checkpoints++;
      continue;
    }
    if (!walking) {
      walking = true;
      if (anchorSeq === 0 && running !== ZERO) {
        bad("the export starts at the genesis but its anchor is not 64 zeros");
      } else if (anchorSeq !== 0 && checkpoints.get(anchorSeq) !== running) {
        bad(`the export's anchor #${anchorSeq} is not a signed checkpoint`);
      }
    }
    const seq = Number(record.seq);
    if (seq !== want) return bad(`line ${line}: expected #${want}, found #${seq}`);
    if (record.type === "event") {
      if (record.prev_hash !== running) return bad(`#${seq} does not link to the event before it`);
      try {
        if (record.invalid) throw new Error(record.invalid);
        checkBody(record.body);
      } catch (e) {
        return bad(`#${seq} is not a canonical event: ${e.message}`);
      }
      running = sha256(`${running}\n${seq}\n${sha256(Buffer.from(record.body, "utf8"))}`);
      if (running !== record.hash) return bad(`#${seq} does not match its hash: its content was changed`);
      report.events++;
    } else if (record.type === "link") {
      running = sha256(`${running}\n${seq}\n${record.digest}`);
      report.links++;
    } else {
      return bad(`line ${line}: unknown record ${record.type}`);
    }
    if (checkpoints.has(seq) && checkpoints.get(seq) !== running) {
      return bad(`#${seq} differs from the checkpoint signed at #${seq}`);
    }
    want = seq + 1;
  }
  const last = want - 1;
  if (last !== report.to) bad(`the export stops at #${last}, its header says #${report.to}`);
  else if (!checkpoints.has(last)) bad(`#${last}, the end of the export, is not covered by a signed checkpoint`);
}

function main(argv) {
  if (argv[0] === "--jcs") {
    // One JSON value per line in, its RFC 8785 form (or "ERROR") per line out.
    const lines = fs.readFileSync(argv[1], "utf8").split("\n").filter((l) => l !== "");
    for (const line of lines) {
      try {
        process.stdout.write(jcs(JSON.parse(line)) + "\n");
      } catch (e) {
        process.stdout.write("ERROR\n");
      }
    }
    return 0;
  }
  const keyAt = argv.indexOf("--public-key");
  if (argv.length !== 3 || keyAt < 0 || keyAt === argv.length - 1) {
    process.stdout.write("usage: node verify.js EXPORT --public-key KEY.pem\n");
    return 2;
  }
  const keyFile = argv[keyAt + 1];
  const exportFile = argv.filter((_, i) => i !== keyAt && i !== keyAt + 1)[0];
  const keys = loadKeys(fs.readFileSync(keyFile, "utf8"));
  if (keys.size === 0) {
    process.stdout.write(`FAILED: no Ed25519 public key in ${keyFile}\n`);
    return 1;
  }
  const report = verify(fs.readFileSync(exportFile), keys);
  if (report.ok) {
    process.stdout.write(
      `OK: #${report.from}..#${report.to} intact: ${report.events} events shown, ` +
        `${report.links} linked by digest, ${report.checkpoints} signed checkpoints\n`,
    );
    return 0;
  }
  process.stdout.write("FAILED: " + report.problems.slice(0, 5).join("; ") + "\n");
  return 1;
}

process.exitCode = main(process.argv.slice(2));
