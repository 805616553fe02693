// Drives the keygate admin console in a real headless Chromium (Debian's, through
// playwright-core; no browser is downloaded) against a live gateway: sign in, create an
// app and see its key once, a setting refused then changed, the app key rotated, signing
// keys rotated and revoked, an app deleted after typing its name, a change without the CSRF
// token refused, sign out, and the failure limit on wrong root keys. Screenshots of each
// page at 1280 and 390 px go to screenshots/ (ignored by git).
//
//   BASE=http://127.0.0.1:PORT ROOT_KEY=... BURST=3 node console.mjs
import { mkdirSync } from "node:fs";
import { chromium } from "playwright-core";

const BASE = process.env.BASE;
const ROOT_KEY = process.env.ROOT_KEY;
const BURST = Number(process.env.BURST || "3");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const SHOTS = new URL("./screenshots/", import.meta.url).pathname;

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

async function shots(page, name) {
  for (const width of [1280, 390]) {
    await page.setViewportSize({ width, height: 900 });
    const sideways = await page.evaluate(() => document.documentElement.scrollWidth > document.documentElement.clientWidth);
    check(`${name} at ${width} px does not scroll sideways`, !sideways);
    await page.screenshot({ path: `${SHOTS}${name}-${width}.png`, fullPage: true });
  }
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
  page.on("dialog", (d) => d.accept());

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

  // ---- delete an app after typing its name
  await page.getByRole("link", { name: "Apps", exact: true }).click();
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
console.log(`console: ${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
