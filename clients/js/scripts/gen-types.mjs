// Generates src/protocol.ts from ../../protocol/schema.json (the server's published
// JSON Schema): one interface per message, unions of what each side sends, the close
// codes. `node scripts/gen-types.mjs --check` fails when the committed file is stale.
import { readFileSync, writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { dirname, join } from "node:path";

const here = dirname(fileURLToPath(import.meta.url));
const schemaPath = join(here, "..", "..", "..", "protocol", "schema.json");
const outPath = join(here, "..", "src", "protocol.ts");
const schema = JSON.parse(readFileSync(schemaPath, "utf8"));
const defs = schema.$defs;

// "Error" would shadow the built-in Error class.
const rename = (name) => (name === "Error" ? "ErrorFrame" : name);

function type(s) {
  if (s.$ref) return rename(s.$ref.split("/").pop());
  if (s.anyOf) return s.anyOf.map(type).join(" | ");
  if (s.enum) return s.enum.map((v) => JSON.stringify(v)).join(" | ");
  switch (s.type) {
    case "string": return "string";
    case "integer": case "number": return "number";
    case "boolean": return "boolean";
    case "null": return "null";
    case "array": return `${type(s.items ?? {})}[]`;
    case "object":
      if (s.additionalProperties) return `Record<string, ${type(s.additionalProperties)}>`;
      return "Record<string, unknown>";
    default: return "unknown";
  }
}

const doc = (text, indent = "") =>
  text ? `${indent}/** ${text.replace(/\*\//g, "*\\/").split("\n").join(`\n${indent} * `)} */\n` : "";

let out = `// Generated from protocol/schema.json by scripts/gen-types.mjs: do not edit.\n`;
out += `export const PROTOCOL_VERSION = ${schema["x-protocol-version"]};\n\n`;
for (const [raw, s] of Object.entries(defs)) {
  const name = rename(raw);
  out += doc(s.description);
  if (s.enum) { out += `export type ${name} = ${type(s)};\n\n`; continue; }
  out += `export interface ${name} {\n`;
  const required = new Set(s.required ?? []);
  for (const [prop, ps] of Object.entries(s.properties ?? {})) {
    const optional = required.has(prop) ? "" : "?";
    out += `  ${prop}${optional}: ${type(ps)};\n`;
  }
  out += `}\n\n`;
}
const union = (key) => schema[key].anyOf.map(type).join("\n  | ");
out += `export type ClientMessage =\n  | ${union("x-client-to-server")};\n\n`;
out += `export type ServerMessage =\n  | ${union("x-server-to-client")};\n\n`;
out += `export interface CloseCodeInfo { name: string; meaning: string; reconnect: boolean }\n`;
out += `export const CLOSE_CODES: Record<number, CloseCodeInfo> = ${JSON.stringify(schema["x-close-codes"], null, 2)};\n`;

if (process.argv.includes("--check")) {
  const current = readFileSync(outPath, "utf8");
  if (current !== out) {
    console.error("src/protocol.ts is stale: run `node scripts/gen-types.mjs`");
    process.exit(1);
  }
} else {
  writeFileSync(outPath, out);
}
