// `npm run build` (after `buf generate` and the type check): bundles src/main.ts and the CSS
// into dist/ beside index.html. dist/ is what `chatd --web-root` serves.
// `node build.mjs --watch` (npm run watch) rebuilds on every change; reload the page.
import { build, context } from "esbuild";
import { copyFile, mkdir, rm } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const dist = join(here, "dist");
const watch = process.argv.includes("--watch");

await rm(dist, { recursive: true, force: true });
await mkdir(dist, { recursive: true });
await copyFile(join(here, "index.html"), join(dist, "index.html"));
const options = {
  entryPoints: [join(here, "src/main.ts"), join(here, "src/style.css")],
  outdir: dist,
  bundle: true,
  format: "esm",
  target: "es2022",
  minify: !watch,
  sourcemap: true,
  legalComments: "none",
  logLevel: watch ? "info" : "warning",
};
if (watch) {
  await (await context(options)).watch();
  console.log(`watching src/, writing ${dist}`);
} else {
  await build(options);
  console.log(`built ${dist}`);
}
