// Drives the egress map page (/ui) in headless Chromium for crates/sluice/tests/egress_map.rs.
//
//   node map.mjs check URL ARTIFACT_DIR   what the page shows, at 1280x800 and 420x800 (JSON),
//                                         with screenshots in ARTIFACT_DIR
//   node map.mjs bench URL ARTIFACT_DIR   load-to-rendered-map times (JSON)
//
// playwright-core comes from UI_NODE_MODULES (scripts/test installs it under target/); the
// browser is Debian's chromium. The Rust test judges the JSON printed here.
import { createRequire } from "node:module";
import path from "node:path";

const [mode, url, artifacts] = process.argv.slice(2);
const require = createRequire(path.join(process.env.UI_NODE_MODULES, "noop.js"));
const { chromium } = require("playwright-core");

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--headless", "--no-sandbox", "--disable-background-networking", "--disable-gpu"],
});

// What a viewport shows: the map's edges, the table's rows, layout facts.
async function look(page, width, height, shot) {
  await page.setViewportSize({ width, height });
  await page.goto(url, { waitUntil: "load" });
  await page.waitForSelector("body[data-ready='1']", { timeout: 10000 });
  const seen = await page.evaluate(() => {
    const visible = (sel) => {
      const el = document.querySelector(sel);
      if (!el) return false;
      const r = el.getBoundingClientRect();
      return r.width > 0 && r.height > 0 && getComputedStyle(el).visibility !== "hidden";
    };
    const main = document.querySelector("main");
    return {
      who: document.getElementById("who").textContent,
      scope: document.querySelector(".scope").textContent,
      edges: [...document.querySelectorAll("#map path.edge")].map((p) => ({
        source: p.dataset.source,
        destination: p.dataset.destination,
        outcome: p.dataset.outcome,
        rate: p.dataset.rate,
        color: getComputedStyle(p).stroke,
      })),
      edgeLabels: [...document.querySelectorAll("#map text.edge-label")].map((t) => t.textContent),
      rows: [...document.querySelectorAll("#decisions tbody tr")].map((tr) => ({
        outcome: tr.dataset.outcome,
        source: tr.dataset.source,
        destination: tr.dataset.destination,
        cells: [...tr.cells].map((c) => c.textContent),
      })),
      hosts: [...document.querySelectorAll("#config .card")].map((c) => c.textContent),
      overflow: {
        document: document.documentElement.scrollWidth - document.documentElement.clientWidth,
        main: main.scrollWidth - main.clientWidth,
      },
      visible: {
        map: visible("#map"),
        legend: visible("#legend"),
        table: visible("#decisions"),
        filters: visible("#filters"),
        config: visible("#config"),
        who: visible("#who"),
      },
      status: document.getElementById("status").className,
    };
  });
  await page.screenshot({ path: path.join(artifacts, shot), fullPage: true });
  return seen;
}

async function check() {
  const page = await browser.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });
  const wide = await look(page, 1280, 800, "egress-map.png");
  // The filters narrow the table: only the denied decisions remain.
  await page.selectOption("#f-outcome", "denied");
  const filtered = await page.evaluate(() =>
    [...document.querySelectorAll("#decisions tbody tr")].map((tr) => tr.dataset.outcome));
  await page.selectOption("#f-outcome", "");
  const narrow = await look(page, 420, 800, "egress-map-narrow.png");
  return { wide, narrow, filtered, errors };
}

async function bench() {
  const page = await browser.newPage();
  await page.setViewportSize({ width: 1280, height: 800 });
  const runs = [];
  for (let i = 0; i < 4; i++) {
    const t0 = Date.now();
    await page.goto(url, { waitUntil: "load" });
    await page.waitForSelector("body[data-ready='1']", { timeout: 10000 });
    const wall = Date.now() - t0;
    const r = await page.evaluate(() => ({
      rendered: window.sluiceMapRenderedMs,
      edges: document.querySelectorAll("#map path.edge").length,
    }));
    runs.push({ wall_ms: wall, rendered_ms: Math.round(r.rendered), edges: r.edges });
  }
  await page.screenshot({ path: path.join(artifacts, "egress-map-1000-edges.png") });
  return { runs };
}

try {
  const out = mode === "bench" ? await bench() : await check();
  console.log(JSON.stringify(out));
} finally {
  await browser.close();
}
