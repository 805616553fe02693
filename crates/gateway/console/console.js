// keygate console: a small script over the console API (/console/api), which is the root
// API behind a console session. The root key is sent once, to sign in, and never kept:
// the session is an HttpOnly cookie, and the CSRF token lives in this page's memory only.
"use strict";

const state = { csrf: null };
const main = () => document.getElementById("main");

// ---------------------------------------------------------------- DOM helpers

// h("p", {class: "x"}, "text", child): an element; strings become text, never HTML.
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === false || value === null || value === undefined) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (value === true) el.setAttribute(name, "");
    else el.setAttribute(name, String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function show(...nodes) {
  const m = main();
  m.replaceChildren(...nodes);
  const heading = m.querySelector("h1");
  if (heading) heading.setAttribute("tabindex", "-1");
  (heading || m).focus();
}

function toast(text) {
  const t = document.getElementById("toast");
  t.textContent = text;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.textContent = ""; }, 6000);
}

const date = (secs) => (secs ? new Date(secs * 1000).toISOString().replace("T", " ").slice(0, 19) + " UTC" : "–");

// ---------------------------------------------------------------- the API

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (method !== "GET") headers["X-CSRF-Token"] = state.csrf || "";
  const init = { method, headers, credentials: "same-origin" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch("/console/api" + path, init);
  const text = await response.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch (_) { json = null; }
  if (response.status === 403 && path !== "/login" && json && /console session|CSRF/.test(json.message || "")) {
    // The session ended (or the CSRF token is stale): sign in again.
    state.csrf = null;
    signIn(json.message);
    throw new Error("signed out");
  }
  return { status: response.status, json, retryAfter: response.headers.get("Retry-After") };
}

// A field error list from a 400, by field name.
function fieldErrors(json) {
  const out = {};
  for (const e of (json && json.errors) || []) out[e.error_field] = e.error_message;
  return out;
}

function failure(result) {
  const message = (result.json && result.json.message) || `HTTP ${result.status}`;
  return h("p", { class: "error", role: "alert" }, message);
}

// ---------------------------------------------------------------- sign in and out

function signIn(notice) {
  document.getElementById("signout").hidden = true;
  const input = h("input", { id: "root-key", name: "root_key", type: "password", autocomplete: "off", required: true, "aria-describedby": "signin-error" });
  const error = h("p", { id: "signin-error", class: "error", role: "alert" }, notice || "");
  const form = h("form", { class: "card narrow", onsubmit: async (event) => {
    event.preventDefault();
    error.textContent = "";
    const result = await api("POST", "/login", { root_key: input.value });
    input.value = "";
    if (result.status === 200) {
      state.csrf = result.json.csrf_token;
      document.getElementById("signout").hidden = false;
      if (!location.hash || location.hash === "#/") location.hash = "#/apps";
      route();
    } else if (result.status === 429) {
      error.textContent = `Too many failed attempts from this address. Try again in ${result.retryAfter || "a few"} s.`;
    } else if (result.status === 403) {
      error.textContent = "That is not the root key.";
    } else {
      error.textContent = (result.json && result.json.message) || `HTTP ${result.status}`;
    }
  } },
    h("h1", {}, "Sign in"),
    h("p", { class: "muted" }, "The root key is sent once to open a console session; the browser does not keep it."),
    h("label", { for: "root-key" }, "Root key"), input,
    h("button", { type: "submit" }, "Sign in"),
    error);
  show(form);
}

async function signOut() {
  await api("POST", "/logout").catch(() => {});
  state.csrf = null;
  signIn("Signed out.");
}

// ---------------------------------------------------------------- a secret shown once

function shownOnce(title, secret, next) {
  const value = h("code", { id: "secret", class: "secret" }, secret);
  const copy = h("button", { type: "button", onclick: async () => {
    try { await navigator.clipboard.writeText(secret); toast("Copied."); } catch (_) { toast("Copy it by hand: select the key."); }
  } }, "Copy");
  return h("section", { class: "card once", "aria-labelledby": "once-title" },
    h("h2", { id: "once-title" }, title),
    h("p", { class: "warning" }, "Shown only this once: store it now. keygate keeps only a hash of it."),
    h("div", { class: "row" }, value, copy),
    next ? h("p", {}, next) : null);
}

// ---------------------------------------------------------------- apps

async function appsPage() {
  const result = await api("GET", "/apps");
  if (result.status !== 200) return show(h("h1", {}, "Apps"), failure(result));
  const name = h("input", { id: "new-name", name: "name", required: true, maxlength: 100, "aria-describedby": "new-name-error" });
  const error = h("p", { id: "new-name-error", class: "error", role: "alert" });
  const created = h("div", {});
  const form = h("form", { class: "card", onsubmit: async (event) => {
    event.preventDefault();
    error.textContent = "";
    const r = await api("POST", "/apps", { name: name.value });
    if (r.status === 201) {
      name.value = "";
      created.replaceChildren(shownOnce(`App key of ${r.json.app_id}`, r.json.app_key,
        h("a", { href: `#/apps/${r.json.app_id}` }, "Open the app")));
      await refreshList();
    } else {
      error.textContent = fieldErrors(r.json).name || (r.json && r.json.message) || `HTTP ${r.status}`;
    }
  } },
    h("h2", {}, "Create an app"),
    h("label", { for: "new-name" }, "Name"), name,
    h("button", { type: "submit" }, "Create"), error);
  const list = h("div", {});
  const refreshList = async () => {
    const r = await api("GET", "/apps");
    list.replaceChildren(appTable(r.json.apps, await liveSessions()));
  };
  list.replaceChildren(appTable(result.json.apps, await liveSessions()));
  show(h("h1", {}, "Apps"), created, list, form);
}

// Live sessions by app id ({} when they cannot be read: the list still shows).
async function liveSessions() {
  const r = await api("GET", "/live-sessions");
  return r.status === 200 ? r.json.live_sessions : {};
}

function appTable(apps, live) {
  if (!apps.length) return h("p", { class: "muted" }, "No apps yet.");
  return h("div", { class: "scroll" }, h("table", { id: "apps" },
    h("thead", {}, h("tr", {}, ["Name", "App id", "Created", "Live sessions"].map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, apps.map((app) => h("tr", { "data-app": app.app_id },
      h("td", { "data-label": "Name" }, h("a", { href: `#/apps/${app.app_id}` }, app.name)),
      h("td", { "data-label": "App id" }, h("code", {}, app.app_id)),
      h("td", { "data-label": "Created" }, date(app.created_at)),
      h("td", { "data-label": "Live sessions", class: "live" }, live[app.app_id] ?? "–"))))));
}

// The settings the console edits: [field, label, kind, choices].
const SETTINGS = [
  ["name", "Name", "text"],
  ["issuer", "Issuer (iss)", "text"],
  ["audience", "Default audience (aud)", "text"],
  ["token_expire", "Auth token lifetime (s)", "number"],
  ["token_notbefore", "Auth token not before (s)", "number"],
  ["refresh_expire", "Refresh token lifetime (s)", "number"],
  ["refresh_notbefore", "Refresh token not before (s)", "number"],
  ["session_max_age", "Session lifetime (s)", "number"],
  ["reuse_grace", "Reuse grace (s)", "number"],
  ["rotation_period", "Signing key rotation period (s)", "number"],
  ["max_sessions_per_sub", "Sessions per subject (0: no limit)", "number"],
  ["refresh_rotation", "Rotate refresh tokens", "checkbox"],
  ["on_reuse", "On reuse", "select", ["revoke_session", "revoke_subject"]],
  ["access_token_profile", "Token profile", "select", ["keygate", "rfc9068"]],
];

async function appPage(appId) {
  const [app, keys] = await Promise.all([api("GET", `/apps/${appId}`), api("GET", `/apps/${appId}/keys`)]);
  if (app.status !== 200) return show(h("h1", {}, "App"), failure(app), h("a", { href: "#/apps" }, "All apps"));
  const a = app.json;
  show(
    h("nav", { class: "crumbs", "aria-label": "Breadcrumb" }, h("a", { href: "#/apps" }, "Apps"), " / ", a.name),
    h("h1", {}, a.name),
    h("p", { class: "muted" }, "App id ", h("code", {}, a.app_id), " · created ", date(a.created_at),
      " · ", h("a", { href: `/app/${a.app_id}/jwks.json`, id: "jwks" }, "JWKS")),
    h("div", { id: "once" }),
    settingsForm(a),
    keysSection(a, keys),
    appKeySection(a),
    deleteSection(a));
}

function settingsForm(app) {
  const inputs = {};
  const errors = {};
  const rows = SETTINGS.map(([field, label, kind, choices]) => {
    const id = `set-${field}`;
    let input;
    if (kind === "select") {
      input = h("select", { id, name: field }, choices.map((c) => h("option", { value: c, selected: app[field] === c }, c)));
    } else if (kind === "checkbox") {
      input = h("input", { id, name: field, type: "checkbox", checked: Boolean(app[field]) });
    } else {
      input = h("input", { id, name: field, type: kind === "number" ? "text" : "text", inputmode: kind === "number" ? "numeric" : null, value: app[field] });
    }
    inputs[field] = [input, kind];
    errors[field] = h("p", { id: `${id}-error`, class: "error field-error", role: "alert" });
    input.setAttribute("aria-describedby", `${id}-error`);
    return h("div", { class: kind === "checkbox" ? "field check" : "field" }, h("label", { for: id }, label), input, errors[field]);
  });
  const status = h("p", { class: "error", role: "alert" });
  return h("form", { class: "card", id: "settings", onsubmit: async (event) => {
    event.preventDefault();
    status.textContent = "";
    for (const e of Object.values(errors)) e.textContent = "";
    const patch = {};
    for (const [field, [input, kind]] of Object.entries(inputs)) {
      let value = kind === "checkbox" ? input.checked : input.value;
      if (kind === "number") value = /^-?\d+$/.test(value.trim()) ? Number(value.trim()) : value;
      if (value !== app[field]) patch[field] = value;
    }
    if (!Object.keys(patch).length) { toast("Nothing changed."); return; }
    const r = await api("PATCH", `/apps/${app.app_id}`, patch);
    if (r.status === 200) { Object.assign(app, r.json); toast("Settings saved."); return; }
    const byField = fieldErrors(r.json);
    let placed = false;
    for (const [field, message] of Object.entries(byField)) {
      if (errors[field]) { errors[field].textContent = message; placed = true; }
    }
    if (!placed) status.replaceChildren(failure(r));
  } },
    h("h2", {}, "Settings"), h("div", { class: "fields" }, rows),
    h("button", { type: "submit" }, "Save settings"), status);
}

function keysSection(app, keys) {
  const body = keys.status !== 200 ? failure(keys) : h("div", { class: "scroll" }, h("table", { id: "keys" },
    h("thead", {}, h("tr", {}, ["Key id", "State", "Created", "Active since", "Retired", "Revoked", ""].map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, keys.json.keys.map((k) => h("tr", { "data-key": k.key_id, "data-state": k.status },
      h("td", { "data-label": "Key id" }, h("code", {}, k.key_id)),
      h("td", { "data-label": "State" }, h("span", { class: `state ${k.status}` }, k.status)),
      h("td", { "data-label": "Created" }, date(k.created_at)),
      h("td", { "data-label": "Active since" }, date(k.activated_at)),
      h("td", { "data-label": "Retired" }, date(k.retired_at)),
      h("td", { "data-label": "Revoked" }, date(k.revoked_at)),
      h("td", {}, k.status === "revoked" ? "" : h("button", { type: "button", class: "danger", "aria-label": `Revoke key ${k.key_id}`, onclick: async () => {
        if (!confirm(`Revoke signing key ${k.key_id}? Tokens it signed stop verifying at once.`)) return;
        const r = await api("POST", `/apps/${app.app_id}/keys/${k.key_id}/revoke`);
        if (r.status === 200) { toast(`Key ${k.key_id} revoked.`); route(); } else toast((r.json && r.json.message) || `HTTP ${r.status}`);
      } }, "Revoke")))))));
  return h("section", { class: "card", "aria-labelledby": "keys-title" },
    h("h2", { id: "keys-title" }, "Signing keys"), body,
    h("button", { type: "button", id: "rotate-keys", onclick: async () => {
      const r = await api("POST", `/apps/${app.app_id}/keys/rotate`);
      if (r.status === 200) { toast("Signing keys rotated: next became active."); route(); } else toast((r.json && r.json.message) || `HTTP ${r.status}`);
    } }, "Rotate signing keys"));
}

function appKeySection(app) {
  const grace = h("select", { id: "grace", name: "grace" },
    [["0", "none"], ["3600", "1 hour"], ["86400", "1 day"], ["604800", "7 days"]].map(([v, t]) => h("option", { value: v }, t)));
  return h("section", { class: "card", "aria-labelledby": "appkey-title" },
    h("h2", { id: "appkey-title" }, "App key"),
    h("p", { class: "muted" }, "A new app key replaces the current one; the old one keeps working for the grace chosen."),
    h("label", { for: "grace" }, "Old key keeps working for"), grace,
    h("button", { type: "button", id: "rotate-app-key", onclick: async () => {
      const r = await api("POST", `/apps/${app.app_id}/rotate-app-key`, { grace: Number(grace.value) });
      const once = document.getElementById("once");
      if (r.status === 200) {
        const until = r.json.previous_key_valid_until ? `The old key works until ${date(r.json.previous_key_valid_until)}.` : "The old key no longer works.";
        once.replaceChildren(shownOnce("New app key", r.json.app_key, until));
        once.scrollIntoView();
      } else once.replaceChildren(failure(r));
    } }, "Rotate the app key"));
}

function deleteSection(app) {
  const typed = h("input", { id: "confirm-name", autocomplete: "off", "aria-describedby": "delete-help" });
  const button = h("button", { type: "submit", class: "danger", disabled: true }, "Delete this app");
  typed.addEventListener("input", () => { button.disabled = typed.value !== app.name; });
  return h("form", { class: "card", id: "delete", onsubmit: async (event) => {
    event.preventDefault();
    if (typed.value !== app.name) return;
    const r = await api("DELETE", `/apps/${app.app_id}`);
    if (r.status === 200) { toast(`App ${app.name} deleted.`); location.hash = "#/apps"; } else toast((r.json && r.json.message) || `HTTP ${r.status}`);
  } },
    h("h2", {}, "Delete"),
    h("p", { id: "delete-help", class: "muted" }, "Deletes the app, its keys and its sessions. Type the app's name to confirm."),
    h("label", { for: "confirm-name" }, "App name"), typed, button);
}

// ---------------------------------------------------------------- routing

async function route() {
  if (!state.csrf) return;
  const hash = location.hash || "#/apps";
  const match = /^#\/apps\/([0-9A-Za-z]{26})$/.exec(hash);
  try {
    if (match) await appPage(match[1]);
    else await appsPage();
  } catch (err) {
    if (err.message !== "signed out") show(h("p", { class: "error", role: "alert" }, String(err)));
  }
}

async function boot() {
  document.getElementById("signout").addEventListener("click", signOut);
  window.addEventListener("hashchange", route);
  const response = await fetch("/console/api/session", { credentials: "same-origin" });
  if (response.status === 200) {
    state.csrf = (await response.json()).csrf_token;
    document.getElementById("signout").hidden = false;
    route();
  } else {
    signIn();
  }
}

document.addEventListener("DOMContentLoaded", boot);
