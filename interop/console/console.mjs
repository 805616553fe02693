// Drives the keygate admin console in a real headless Chromium (Debian's, through
// playwright-core; no browser is downloaded) against a live gateway: sign in, create an
// app and see its key once, a setting refused then changed, the app key rotated, signing
// keys rotated and revoked, an app deleted after typing its name, a change without the CSRF
// token refused, sign out, and the failure limit on wrong root keys. Screenshots of each
// page at 1280 and 390 px go to screenshots/ (ignored by git).
//
//   BASE=http://127.0.0.1:PORT ROOT_KEY=... BURST=3 node console.mjs
import { mkdirSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { chromium } from "playwright-core";

const BASE = process.env.BASE;
const ROOT_KEY = process.env.ROOT_KEY;
const BURST = Number(process.env.BURST || "3");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const SHOTS = new URL("./screenshots/", import.meta.url).pathname;
// With README_SHOTS=DIR, two viewport-sized images for the README are written there too.
const README_SHOTS = process.env.README_SHOTS || "";
// axe-core, from this test's own npm packages: injected into the page by the test only.
const AXE = readFileSync(createRequire(import.meta.url).resolve("axe-core/axe.min.js"), "utf8");

let passed = 0;
let failed = 0;
function check(name, ok, detail = "") {
  if (ok) passed += 1;
  else {
    failed += 1;
    console.log(`FAIL ${name}${detail ? `: ${detail}` : ""}`);
  }
}

// The root API, from outside the browser, to see what the console really changed.
async function root(method, path, body) {
  const init = { method, headers: { Authorization: ROOT_KEY } };
  if (body) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(BASE + path, init);
  return { status: response.status, json: await response.json().catch(() => null) };
}

async function signWith(appId, appKey) {
  const response = await fetch(`${BASE}/app/${appId}/sign`, {
    method: "POST",
    headers: { Authorization: appKey, "Content-Type": "application/json" },
    body: JSON.stringify({ sub: "browser-user", ip: "203.0.113.9", useragent: "console-test" }),
  });
  return response.status;
}

async function signAs(appId, appKey, sub, useragent) {
  const response = await fetch(`${BASE}/app/${appId}/sign`, {
    method: "POST",
    headers: { Authorization: appKey, "Content-Type": "application/json" },
    body: JSON.stringify({ sub, ip: "198.51.100.23", useragent }),
  });
  return response.json();
}

async function renewWith(appId, appKey, refreshToken) {
  const response = await fetch(`${BASE}/app/${appId}/renew`, {
    method: "POST",
    headers: { Authorization: appKey, "Content-Type": "application/json" },
    body: JSON.stringify({ refresh_token: refreshToken, ip: "198.51.100.23", useragent: "console-test" }),
  });
  return { status: response.status, json: await response.json().catch(() => null) };
}

// axe-core on the page as it is: no serious or critical violation.
async function accessible(page, label) {
  if (!(await page.evaluate(() => typeof window.axe === "object"))) await page.evaluate(AXE);
  const violations = await page.evaluate(async () => (await window.axe.run(document, { resultTypes: ["violations"] }))
    .violations.map((v) => ({ id: v.id, impact: v.impact, nodes: v.nodes.map((n) => n.target.join(" ")).slice(0, 3) })));
  const bad = violations.filter((v) => v.impact === "serious" || v.impact === "critical");
  check(`${label}: no serious or critical accessibility violation (axe-core)`, bad.length === 0, JSON.stringify(bad));
  return violations.length;
}

let axeRuns = 0;
async function shots(page, name) {
  for (const width of [1280, 390]) {
    await page.setViewportSize({ width, height: 900 });
    await page.waitForTimeout(150); // charts follow the width
    const sideways = await page.evaluate(() => document.documentElement.scrollWidth > document.documentElement.clientWidth);
    check(`${name} at ${width} px does not scroll sideways`, !sideways);
    await accessible(page, `${name} at ${width} px`);
    axeRuns += 1;
    await page.screenshot({ path: `${SHOTS}${name}-${width}.png`, fullPage: true });
  }
  await page.setViewportSize({ width: 1280, height: 900 });
}

// The README's two images: one desktop, one phone, each the size of its screen.
async function readmeShot(page, file, width, height, scrollTo) {
  if (!README_SHOTS) return;
  await page.setViewportSize({ width, height });
  await page.waitForTimeout(300);
  await page.evaluate(() => { document.getElementById("toast").textContent = ""; });
  if (scrollTo) await page.locator(scrollTo).evaluate((el) => el.scrollIntoView());
  await page.screenshot({ path: `${README_SHOTS}/${file}` });
  await page.setViewportSize({ width: 1280, height: 900 });
}

mkdirSync(SHOTS, { recursive: true });
const browser = await chromium.launch({
  executablePath: CHROMIUM,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  const problems = [];
  page.on("console", (m) => { if (m.type() === "error" && !/status of 4[0-9][0-9]/.test(m.text())) problems.push(m.text()); });
  page.on("pageerror", (e) => problems.push(String(e)));
  const dialogs = [];
  page.on("dialog", (d) => { dialogs.push(d.message()); d.accept(); });

  // ---- sign in, with the keyboard only
  await page.goto(`${BASE}/console/`);
  await page.getByLabel("Root key").waitFor();
  check("the sign-in form has a labelled root key field", await page.getByLabel("Root key").isVisible());
  await shots(page, "sign-in");
  await page.getByLabel("Root key").focus();
  await page.keyboard.type(ROOT_KEY);
  await page.keyboard.press("Enter");
  await page.getByRole("heading", { name: "Apps" }).waitFor();
  check("signed in: the apps page", true);
  const stored = await page.evaluate(() => JSON.stringify([document.cookie, { ...localStorage }, { ...sessionStorage }]));
  check("the browser's script sees no cookie and nothing stored", stored === '["",{},{}]', stored);
  const cookies = await context.cookies();
  const session = cookies.find((c) => c.name === "keygate_console");
  check("the console cookie is HttpOnly, SameSite=Strict, Path=/console",
    session && session.httpOnly && session.sameSite === "Strict" && session.path === "/console", JSON.stringify(session));
  check("no cookie holds the root key", !cookies.some((c) => c.value.includes(ROOT_KEY)));

  // ---- create an app: its key is shown once and works
  await page.getByLabel("Name", { exact: true }).fill("browser-app");
  await page.getByRole("button", { name: "Create" }).click();
  await page.locator("#secret").waitFor();
  const appKey = (await page.locator("#secret").textContent()).trim();
  check("the app key is shown", appKey.startsWith("kg_"), appKey.slice(0, 3));
  check("with a warning that it is shown once", await page.getByText("Shown only this once").isVisible());
  check("and a copy button", await page.getByRole("button", { name: "Copy" }).isVisible());
  await shots(page, "apps");
  const apps = (await root("GET", "/root/apps")).json.apps;
  const app = apps.find((a) => a.name === "browser-app");
  check("the app exists", Boolean(app));
  check("the shown app key opens sessions", (await signWith(app.app_id, appKey)) === 200);
  await page.reload();
  await page.getByRole("heading", { name: "Apps" }).waitFor();
  const live = await page.locator(`#apps tr[data-app="${app.app_id}"] td.live`).textContent();
  check("the list shows the app's live sessions", live.trim() === "1", live);
  check("the key is not shown again", (await page.locator("#secret").count()) === 0);
  await page.getByRole("link", { name: "browser-app" }).click();
  await page.getByRole("heading", { name: "browser-app" }).waitFor();
  check("the app page links its JWKS", (await page.locator("#jwks").getAttribute("href")) === `/app/${app.app_id}/jwks.json`);
  await page.reload();
  await page.getByRole("heading", { name: "browser-app" }).waitFor();
  check("a reload keeps the console session", true);

  // ---- a bad setting: the API's message next to its field; then a good one
  await page.getByLabel("Auth token lifetime (s)").fill("-5");
  await page.getByRole("button", { name: "Save settings" }).click();
  const fieldError = page.locator("#set-token_expire-error");
  await fieldError.waitFor({ state: "visible" });
  check("the validation message is next to the field", ((await fieldError.textContent()) || "").length > 0);
  await shots(page, "app");
  check("the bad value changed nothing", (await root("GET", `/root/apps/${app.app_id}`)).json.token_expire === app.token_expire);
  await page.getByLabel("Auth token lifetime (s)").fill(String(app.token_expire));
  await page.getByLabel("Reuse grace (s)").fill("30");
  await page.getByRole("button", { name: "Save settings" }).click();
  await page.getByText("Settings saved.").waitFor();
  check("a good value is saved", (await root("GET", `/root/apps/${app.app_id}`)).json.reuse_grace === 30);

  // ---- rotate the app key, with a grace for the old one
  await page.getByLabel("Old key keeps working for").selectOption("3600");
  await page.getByRole("button", { name: "Rotate the app key" }).click();
  await page.getByRole("heading", { name: "New app key" }).waitFor();
  const newKey = (await page.locator("#secret").textContent()).trim();
  check("a new app key is shown once", newKey.startsWith("kg_") && newKey !== appKey);
  check("the new key works", (await signWith(app.app_id, newKey)) === 200);
  check("the old one still does, within its grace", (await signWith(app.app_id, appKey)) === 200);

  // ---- signing keys: rotate, then revoke one; the states change
  const states = async () => page.locator("#keys tbody tr").evaluateAll((rows) => rows.map((r) => r.dataset.state).sort().join(","));
  check("keys start active and next", (await states()) === "active,next", await states());
  await page.getByRole("button", { name: "Rotate signing keys" }).click();
  await page.waitForFunction(() => document.querySelectorAll("#keys tbody tr").length === 3);
  check("after a rotation: active, next, retired", (await states()) === "active,next,retired", await states());
  const retired = await page.locator('#keys tr[data-state="retired"]').getAttribute("data-key");
  await page.getByRole("button", { name: `Revoke key ${retired}` }).click();
  await page.waitForFunction((kid) => document.querySelector(`#keys tr[data-key="${kid}"]`)?.dataset.state === "revoked", retired);
  check("the revoked key shows as revoked", (await states()) === "active,next,revoked", await states());
  const keys = (await root("GET", `/root/apps/${app.app_id}/keys`)).json.keys;
  check("and is revoked", keys.find((k) => k.key_id === retired)?.status === "revoked");
  await shots(page, "keys");

  // ---- a change without the CSRF token: 403, nothing created
  const csrfless = await page.evaluate(async () => {
    const r = await fetch("/console/api/apps", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ name: "csrf-less" }) });
    return r.status;
  });
  check("a change without the CSRF token is refused", csrfless === 403, String(csrfless));
  check("and created nothing", !(await root("GET", "/root/apps")).json.apps.some((a) => a.name === "csrf-less"));

  // ---- sessions: made through the API, found by subject, one revoked, then all of the subject
  const opened = [await signAs(app.app_id, newKey, "ivy", "ivy-phone"), await signAs(app.app_id, newKey, "ivy", "ivy-laptop")];
  await signAs(app.app_id, newKey, "jo", "jo-phone");
  await page.getByRole("link", { name: "Sessions", exact: true }).click();
  await page.getByRole("heading", { name: "Sessions", exact: true }).waitFor();
  await page.getByLabel("Subject (sub)").fill("ivy");
  await page.getByRole("button", { name: "Find sessions" }).click();
  await page.locator("#sessions tbody tr").nth(1).waitFor();
  const listed = await page.locator("#sessions tbody tr").evaluateAll((rows) => rows.map((r) => r.dataset.session));
  check("the subject's two sessions are listed, oldest first", listed.join() === opened.map((o) => o.session_id).join(), listed.join());
  const firstRow = (await page.locator("#sessions tbody tr").first().textContent()) || "";
  check("with the address, user agent and key id", firstRow.includes("198.51.100.23") && firstRow.includes("ivy-phone") && /[0-9A-Z]{26}/.test(firstRow), firstRow);
  await shots(page, "sessions");
  await readmeShot(page, "console-phone.png", 390, 844, "#sessions-title");
  const asked = dialogs.length;
  await page.getByRole("button", { name: `Revoke session ${opened[0].session_id}` }).click();
  await page.waitForFunction(() => document.querySelectorAll("#sessions tbody tr").length === 1);
  check("revoking one session asks first", dialogs.length === asked + 1 && dialogs.at(-1).includes(opened[0].session_id), dialogs.at(-1));
  check("the revoked session renews no more", (await renewWith(app.app_id, newKey, opened[0].refresh_token)).status === 401);
  const ivy = async () => (await root("GET", `/root/apps/${app.app_id}/sessions?sub=ivy`)).json.sessions.map((x) => x.session_id);
  check("the root API lists the other one only", (await ivy()).join() === opened[1].session_id, (await ivy()).join());
  await page.getByRole("button", { name: "Revoke all sessions of ivy" }).click();
  await page.getByRole("heading", { name: "0 live sessions of ivy" }).waitFor();
  check("revoking a subject asks first", dialogs.at(-1).startsWith("Revoke all 1 live sessions of ivy"), dialogs.at(-1));
  check("and leaves the subject no session", (await ivy()).length === 0);
  check("another subject keeps theirs", (await root("GET", `/root/apps/${app.app_id}/sessions?sub=jo`)).json.sessions.length === 1);
  check("a reload keeps the search", (await page.reload(), await page.locator("#sub").inputValue()) === "ivy");

  // ---- the overview; a spent refresh token replayed: the reuse chart moves
  await page.getByRole("navigation", { name: "Main" }).getByRole("link", { name: "Overview" }).click();
  await page.getByRole("heading", { name: "Overview" }).waitFor();
  const reuseFigure = `#overview [data-app="${app.app_id}"] figure.reuse`;
  await page.waitForFunction((sel) => document.querySelector(sel)?.dataset.total !== undefined, reuseFigure);
  const reuseBefore = Number(await page.locator(reuseFigure).getAttribute("data-total"));
  check("the overview draws charts", (await page.locator(`#overview [data-app="${app.app_id}"] canvas`).count()) >= 3);
  let chain = (await signAs(app.app_id, newKey, "lee", "lee-laptop")).refresh_token;
  for (let i = 0; i < 20; i += 1) chain = (await renewWith(app.app_id, newKey, chain)).json.refresh_token;
  // (The app's reuse grace, 30 s since the settings step, would take a replay for a retry.)
  check("the reuse grace set back to 0", (await root("PATCH", `/root/apps/${app.app_id}`, { reuse_grace: 0 })).status === 200);
  const spent = await signAs(app.app_id, newKey, "kim", "kim-phone");
  const rotated = await renewWith(app.app_id, newKey, spent.refresh_token);
  check("a renew through the API", rotated.status === 200, JSON.stringify(rotated.json));
  const replayed = await renewWith(app.app_id, newKey, spent.refresh_token);
  check("the spent refresh token, replayed, is refused", replayed.status === 401, JSON.stringify(replayed.json));
  await page.waitForFunction(([sel, n]) => Number(document.querySelector(sel)?.dataset.total) > n, [reuseFigure, reuseBefore], { timeout: 15000 });
  check("the reuse chart moves within a refresh", Number(await page.locator(reuseFigure).getAttribute("data-total")) === reuseBefore + 1);
  const renewsTotal = Number(await page.locator(`#overview [data-app="${app.app_id}"] figure.renews`).getAttribute("data-total"));
  check("the renews chart counts the renews", renewsTotal === 21, String(renewsTotal));
  await shots(page, "overview");
  await readmeShot(page, "console-desktop.png", 1280, 800);

  // ---- events: the reuse is first and stands out; details readable; filter; pages
  for (let i = 0; i < 26; i += 1) await root("PATCH", `/root/apps/${app.app_id}`, { reuse_grace: 31 + i });
  await page.goto(`${BASE}/console/#/apps/${app.app_id}/events?kind=reuse_detected`);
  await page.locator("#events tbody tr").first().waitFor();
  const reuseRow = page.locator("#events tbody tr").first();
  check("the reuse event is listed", (await reuseRow.getAttribute("data-kind")) === "reuse_detected");
  check("highlighted, in words as well as colour", (await reuseRow.getAttribute("class")) === "reuse" && /reuse detected/.test(await reuseRow.textContent()));
  await reuseRow.locator("summary").click();
  const detail = (await reuseRow.locator("pre").textContent()) || "";
  check("its detail is readable", detail.includes(spent.session_id) && detail.includes('"revoked"'), detail);
  await page.getByLabel("Kind").selectOption("");
  await page.locator("#events tbody tr").nth(24).waitFor();
  const firstPage = await page.locator("#events tbody tr").count();
  check("all kinds: a page of 25, newest first", firstPage === 25 && (await page.locator("#events tbody tr").first().getAttribute("data-kind")) === "app_updated", String(firstPage));
  const highlighted = await page.locator("#events tbody tr.reuse").count();
  await page.getByRole("button", { name: "Older events" }).click();
  await page.waitForFunction(() => document.querySelectorAll("#events tbody tr").length > 25);
  const allEvents = (await root("GET", `/root/apps/${app.app_id}/events?limit=500`)).json.events.length;
  while (await page.getByRole("button", { name: "Older events" }).isVisible()) {
    const n = await page.locator("#events tbody tr").count();
    await page.getByRole("button", { name: "Older events" }).click();
    await page.waitForFunction((k) => document.querySelectorAll("#events tbody tr").length > k, n);
  }
  check("older pages follow the API's cursor to the first event", (await page.locator("#events tbody tr").count()) === allEvents
    && (await page.locator("#events tbody tr").last().getAttribute("data-kind")) === "app_created", String(allEvents));
  check("the reuse among all kinds still stands out", (await page.locator("#events tbody tr.reuse").count()) >= Math.max(1, highlighted));
  await page.getByLabel("Kind").selectOption("app_key_rotated");
  await page.waitForFunction(() => [...document.querySelectorAll("#events tbody tr")].every((r) => r.dataset.kind === "app_key_rotated") && document.querySelectorAll("#events tbody tr").length === 1);
  check("filtered by kind", true);
  await page.getByLabel("Kind").selectOption("reuse_detected");
  await page.locator("#events tbody tr.reuse").first().waitFor();
  await shots(page, "events");

  // ---- webhook: set (its secret shown once), shown, removed
  await page.getByRole("link", { name: "Webhook", exact: true }).click();
  await page.locator("#no-webhook").waitFor();
  await page.getByLabel("URL").fill("http://hooks.example/keygate");
  await page.getByRole("button", { name: "Set the webhook" }).click();
  await page.locator("#url-error").filter({ hasText: /\S/ }).waitFor();
  check("a URL the API refuses gets its message", (await root("GET", `/root/apps/${app.app_id}/webhook`)).status === 404);
  await page.getByLabel("URL").fill("http://127.0.0.1:9/keygate-hook");
  await page.getByRole("button", { name: "Set the webhook" }).click();
  await page.locator("#secret").waitFor();
  const hookSecret = ((await page.locator("#secret").textContent()) || "").trim();
  const hook = await root("GET", `/root/apps/${app.app_id}/webhook`);
  check("the webhook is set", hook.status === 200 && hook.json.url === "http://127.0.0.1:9/keygate-hook", JSON.stringify(hook.json));
  check("its secret is shown once", hookSecret.length >= 32 && !JSON.stringify(hook.json).includes(hookSecret));
  check("and the page shows the URL", (await page.locator("#webhook-url").textContent()) === "http://127.0.0.1:9/keygate-hook");
  await shots(page, "webhook");
  await page.reload();
  await page.locator("#webhook-url").waitFor();
  check("a reload does not show the secret again", (await page.locator("#secret").count()) === 0);
  await page.getByRole("button", { name: "Remove the webhook" }).click();
  await page.locator("#no-webhook").waitFor();
  check("removing it asks first", dialogs.at(-1).startsWith("Remove the webhook"), dialogs.at(-1));
  check("and removes it", (await root("GET", `/root/apps/${app.app_id}/webhook`)).status === 404);

  // ---- delete an app after typing its name
  await page.getByRole("navigation", { name: "Main" }).getByRole("link", { name: "Apps" }).click();
  await page.getByRole("heading", { name: "Apps", exact: true }).waitFor();
  await page.getByLabel("Name", { exact: true }).fill("to-delete");
  await page.getByRole("button", { name: "Create" }).click();
  await page.getByRole("link", { name: "Open the app" }).click();
  await page.getByRole("heading", { name: "to-delete" }).waitFor();
  const del = page.getByRole("button", { name: "Delete this app" });
  await page.getByLabel("App name").fill("to-delet");
  check("delete stays disabled until the name is typed", await del.isDisabled());
  await page.getByLabel("App name").fill("to-delete");
  await del.click();
  await page.getByRole("heading", { name: "Apps" }).waitFor();
  await page.waitForFunction(() => !document.querySelector("#apps")?.textContent.includes("to-delete"));
  check("the app is deleted", !(await root("GET", "/root/apps")).json.apps.some((a) => a.name === "to-delete"));

  // ---- sign out: the session ends on the server
  await page.getByRole("button", { name: "Sign out" }).click();
  await page.getByText("Signed out.").waitFor();
  const after = await page.evaluate(async () => (await fetch("/console/api/apps")).status);
  check("after signing out the console API refuses", after === 403, String(after));
  await page.reload();
  await page.getByLabel("Root key").waitFor();
  check("a reload shows the sign-in form", true);

  // ---- wrong root keys: past the burst, the wait is shown
  for (let i = 0; i <= BURST; i += 1) {
    await page.getByLabel("Root key").fill(`kgr_wrong_${i}_0123456789abcdefghijklmnop`);
    await page.getByRole("button", { name: "Sign in" }).click();
    await page.locator("#signin-error").filter({ hasText: /\S/ }).waitFor();
  }
  const limited = (await page.locator("#signin-error").textContent()) || "";
  check("the rate-limit message with its wait", /Too many failed attempts.*Try again in \d+ s\./.test(limited), limited);
  await shots(page, "rate-limited");

  check("no script error and no CSP violation in the page", problems.length === 0, problems.join(" | "));
} finally {
  await browser.close();
}
console.log(`console: ${passed} passed, ${failed} failed (axe-core on ${axeRuns} page views)`);
process.exit(failed ? 1 : 0);
