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

function signedIn(yes) {
  document.getElementById("signout").hidden = !yes;
  document.getElementById("nav").hidden = !yes;
}

function signIn(notice) {
  stopOverview();
  signedIn(false);
  const input = h("input", { id: "root-key", name: "root_key", type: "password", autocomplete: "off", required: true, "aria-describedby": "signin-error" });
  const error = h("p", { id: "signin-error", class: "error", role: "alert" }, notice || "");
  const form = h("form", { class: "card narrow", onsubmit: async (event) => {
    event.preventDefault();
    error.textContent = "";
    const result = await api("POST", "/login", { root_key: input.value });
    input.value = "";
    if (result.status === 200) {
      state.csrf = result.json.csrf_token;
      signedIn(true);
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

function shownOnce(title, secret, next, kept = "keygate keeps only a hash of it.") {
  const value = h("code", { id: "secret", class: "secret" }, secret);
  const copy = h("button", { type: "button", onclick: async () => {
    try { await navigator.clipboard.writeText(secret); toast("Copied."); } catch (_) { toast("Copy it by hand: select the key."); }
  } }, "Copy");
  return h("section", { class: "card once", "aria-labelledby": "once-title" },
    h("h2", { id: "once-title" }, title),
    h("p", { class: "warning" }, `Shown only this once: store it now. ${kept}`),
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
  ["requests_per_second", "Requests per second, per gateway (0: no limit)", "number"],
  ["requests_burst", "Request burst (0: one second's worth)", "number"],
  ["dpop", "DPoP binding of sessions", "select", ["off", "allowed", "required"]],
  ["dpop_nonce", "DPoP proofs carry the gateway's nonce", "checkbox"],
  ["oauth_public_clients", "Public OAuth clients (DPoP-bound sessions only)", "checkbox"],
];

// The app's pages: [route suffix, tab label].
const APP_TABS = [["", "Settings and keys"], ["/sessions", "Sessions"], ["/events", "Events"], ["/webhook", "Webhook"]];

// The heading, breadcrumb and tabs every page of an app starts with.
function appHeader(a, active) {
  return [
    h("nav", { class: "crumbs", "aria-label": "Breadcrumb" }, h("a", { href: "#/apps" }, "Apps"), " / ", a.name),
    h("h1", {}, a.name),
    h("p", { class: "muted" }, "App id ", h("code", {}, a.app_id), " · created ", date(a.created_at),
      " · ", h("a", { href: `/app/${a.app_id}/jwks.json`, id: "jwks" }, "JWKS")),
    h("nav", { class: "tabs", "aria-label": "App pages" }, APP_TABS.map(([suffix, label]) =>
      h("a", { href: `#/apps/${a.app_id}${suffix}`, "aria-current": suffix === active ? "page" : null }, label))),
  ];
}

// The app, or a page that says why it cannot be shown (null then).
async function loadApp(appId) {
  const app = await api("GET", `/apps/${appId}`);
  if (app.status === 200) return app.json;
  show(h("h1", {}, "App"), failure(app), h("a", { href: "#/apps" }, "All apps"));
  return null;
}

async function appPage(appId) {
  const [app, keys] = await Promise.all([api("GET", `/apps/${appId}`), api("GET", `/apps/${appId}/keys`)]);
  if (app.status !== 200) return show(h("h1", {}, "App"), failure(app), h("a", { href: "#/apps" }, "All apps"));
  const a = app.json;
  show(
    ...appHeader(a, ""),
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

// ---------------------------------------------------------------- sessions of a subject

async function sessionsPage(appId, sub) {
  const a = await loadApp(appId);
  if (!a) return;
  const input = h("input", { id: "sub", name: "sub", autocomplete: "off", required: true, value: sub, "aria-describedby": "sub-help" });
  const results = h("div", { id: "sessions-results" });
  const search = async (subject) => {
    history.replaceState(null, "", `#/apps/${appId}/sessions?sub=${encodeURIComponent(subject)}`);
    const r = await api("GET", `/apps/${appId}/sessions?sub=${encodeURIComponent(subject)}`);
    if (r.status !== 200) {
      results.replaceChildren(h("p", { class: "error", role: "alert" }, fieldErrors(r.json).sub || (r.json && r.json.message) || `HTTP ${r.status}`));
      return;
    }
    results.replaceChildren(sessionList(a, subject, r.json.sessions, () => search(subject)));
  };
  const form = h("form", { class: "card", role: "search", onsubmit: async (event) => {
    event.preventDefault();
    await search(input.value);
  } },
    h("h2", {}, "Sessions"),
    h("label", { for: "sub" }, "Subject (sub)"), input,
    h("p", { id: "sub-help", class: "muted" }, "The user id the app's backend signed the sessions for. Live sessions only: not revoked, not expired."),
    h("button", { type: "submit" }, "Find sessions"));
  show(...appHeader(a, "/sessions"), form, results);
  if (sub) await search(sub);
}

function sessionList(app, sub, sessions, again) {
  const heading = h("h2", { id: "sessions-title" }, `${sessions.length} live session${sessions.length === 1 ? "" : "s"} of ${sub}`);
  if (!sessions.length) return h("section", { class: "card", "aria-labelledby": "sessions-title" }, heading);
  const revoke = async (body, question, done) => {
    if (!confirm(question)) return;
    const r = await api("POST", `/apps/${app.app_id}/sessions/revoke`, body);
    if (r.status === 200) { toast(done(r.json.revoked)); await again(); } else toast((r.json && r.json.message) || `HTTP ${r.status}`);
  };
  return h("section", { class: "card", "aria-labelledby": "sessions-title" }, heading,
    h("div", { class: "scroll" }, h("table", { id: "sessions" },
      h("thead", {}, h("tr", {}, ["Session id", "Created", "Last renewed", "Expires", "IP", "User agent", "Key id", ""].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, sessions.map((s) => h("tr", { "data-session": s.session_id },
        h("td", { "data-label": "Session id" }, h("code", {}, s.session_id)),
        h("td", { "data-label": "Created" }, date(s.created_at)),
        h("td", { "data-label": "Last renewed" }, date(s.last_renewed_at)),
        h("td", { "data-label": "Expires" }, date(s.expires_at)),
        h("td", { "data-label": "IP" }, s.ip || "–"),
        h("td", { "data-label": "User agent", class: "wrap" }, s.useragent || "–"),
        h("td", { "data-label": "Key id" }, h("code", {}, s.key_id)),
        h("td", {}, h("button", { type: "button", class: "danger", "aria-label": `Revoke session ${s.session_id}`,
          onclick: () => revoke({ session_id: s.session_id }, `Revoke session ${s.session_id} of ${sub}? Its refresh token stops working at once.`,
            (n) => (n ? `Session ${s.session_id} revoked.` : "It was already revoked.")) }, "Revoke"))))))),
    h("button", { type: "button", class: "danger", id: "revoke-subject",
      onclick: () => revoke({ sub }, `Revoke all ${sessions.length} live sessions of ${sub}? Every refresh token of theirs stops working at once.`,
        (n) => `${n} session${n === 1 ? "" : "s"} of ${sub} revoked.`) }, `Revoke all sessions of ${sub}`));
}

// ---------------------------------------------------------------- audit events

const EVENT_KINDS = ["reuse_detected", "session_revoked", "subject_revoked", "sessions_revoked", "key_rotated",
  "key_revoked", "app_key_rotated", "app_created", "app_updated", "app_deleted", "webhook_set"];
const EVENT_PAGE = 25;

async function eventsPage(appId, kind) {
  const a = await loadApp(appId);
  if (!a) return;
  const select = h("select", { id: "kind", name: "kind" },
    h("option", { value: "" }, "All kinds"),
    EVENT_KINDS.map((k) => h("option", { value: k, selected: k === kind }, k)));
  select.addEventListener("change", () => { location.hash = `#/apps/${appId}/events${select.value ? `?kind=${select.value}` : ""}`; });
  const rows = h("tbody", {});
  const status = h("p", { class: "muted", id: "events-status", role: "status" });
  const older = h("button", { type: "button", id: "older", hidden: true }, "Older events");
  let before = null;
  const load = async () => {
    const query = new URLSearchParams({ limit: String(EVENT_PAGE) });
    if (kind) query.set("kind", kind);
    if (before) query.set("before", before);
    const r = await api("GET", `/apps/${appId}/events?${query}`);
    if (r.status !== 200) { status.replaceChildren(failure(r)); return; }
    for (const e of r.json.events) rows.append(eventRow(e));
    before = r.json.next;
    older.hidden = !before;
    const shown = rows.children.length;
    status.textContent = shown ? `${shown} event${shown === 1 ? "" : "s"} shown, newest first${before ? "" : "; that is all of them"}.` : "No events.";
  };
  older.addEventListener("click", load);
  show(...appHeader(a, "/events"),
    h("section", { class: "card", "aria-labelledby": "events-title" },
      h("h2", { id: "events-title" }, "Audit events"),
      h("label", { for: "kind" }, "Kind"), select,
      h("div", { class: "scroll" }, h("table", { id: "events" },
        h("thead", {}, h("tr", {}, ["Time", "Kind", "Actor", "Detail"].map((t) => h("th", { scope: "col" }, t)))), rows)),
      status, older));
  await load();
}

function eventRow(e) {
  const reuse = e.kind === "reuse_detected";
  return h("tr", { "data-event": e.event_id, "data-kind": e.kind, class: reuse ? "reuse" : null },
    h("td", { "data-label": "Time" }, date(e.created_at)),
    h("td", { "data-label": "Kind" }, reuse ? h("strong", { class: "badge" }, "⚠ reuse detected") : e.kind),
    h("td", { "data-label": "Actor" }, e.actor),
    h("td", { "data-label": "Detail", class: "wrap" },
      h("details", {}, h("summary", {}, summary(e)), h("pre", {}, JSON.stringify({ event_id: e.event_id, ...e.detail }, null, 2)))));
}

// One line about an event's detail.
function summary(e) {
  const d = e.detail || {};
  const parts = [];
  for (const key of ["sub", "session_id", "key_id", "revoked", "url"]) if (d[key] !== undefined) parts.push(`${key} ${d[key]}`);
  return parts.length ? parts.join(", ") : "Details";
}

// ---------------------------------------------------------------- webhook

async function webhookPage(appId) {
  const a = await loadApp(appId);
  if (!a) return;
  const r = await api("GET", `/apps/${appId}/webhook`);
  const current = h("div", { id: "webhook-current" });
  if (r.status === 200) {
    current.append(
      h("p", {}, "Events are posted to ", h("code", { id: "webhook-url" }, r.json.url), ` since ${date(r.json.created_at)}.`),
      h("button", { type: "button", class: "danger", id: "remove-webhook", onclick: async () => {
        if (!confirm(`Remove the webhook of ${a.name}? Undelivered events are no longer sent.`)) return;
        const removed = await api("DELETE", `/apps/${appId}/webhook`);
        if (removed.status === 200) { toast("Webhook removed."); route(); } else toast((removed.json && removed.json.message) || `HTTP ${removed.status}`);
      } }, "Remove the webhook"));
  } else if (r.status === 404) {
    current.append(h("p", { class: "muted", id: "no-webhook" }, "No webhook: events are only kept here."));
  } else {
    current.append(failure(r));
  }
  const url = h("input", { id: "webhook-url-input", name: "url", type: "url", autocomplete: "off", required: true, placeholder: "https://hooks.example/keygate", "aria-describedby": "webhook-help url-error" });
  const error = h("p", { id: "url-error", class: "error", role: "alert" });
  const once = h("div", { id: "once" });
  const form = h("form", { class: "card", onsubmit: async (event) => {
    event.preventDefault();
    error.textContent = "";
    const set = await api("PUT", `/apps/${appId}/webhook`, { url: url.value });
    if (set.status !== 200) { error.textContent = fieldErrors(set.json).url || (set.json && set.json.message) || `HTTP ${set.status}`; return; }
    await webhookPage(appId);
    document.getElementById("once").replaceChildren(shownOnce("Webhook signing secret", set.json.secret,
      "Each delivery carries keygate-signature: t=SECONDS,v1=HEX, the HMAC-SHA256 of SECONDS.BODY under this secret.",
      "keygate keeps it sealed under the master key and never shows it again."));
  } },
    h("h2", {}, r.status === 200 ? "Replace the webhook" : "Set a webhook"),
    h("label", { for: "webhook-url-input" }, "URL"), url,
    h("p", { id: "webhook-help", class: "muted" }, "https, or http to a loopback address. Setting it makes a new signing secret, shown once."),
    h("button", { type: "submit" }, "Set the webhook"), error);
  show(...appHeader(a, "/webhook"), once,
    h("section", { class: "card", "aria-labelledby": "webhook-title" }, h("h2", { id: "webhook-title" }, "Webhook"), current), form);
}

// ---------------------------------------------------------------- overview: charts

const REFRESH_MS = 5000;
const overview = { timer: null, charts: new Map() };

function stopOverview() {
  clearInterval(overview.timer);
  overview.timer = null;
  stopCharts();
}

async function overviewPage() {
  const grid = h("div", { id: "overview", class: "overview" });
  const status = h("p", { class: "muted", id: "overview-status" });
  show(h("h1", {}, "Overview"),
    h("p", { class: "muted" }, "The last hour, minute by minute. Renews and reuse detections as this gateway counted them; live sessions as counted in the database, at most every 10 s. Refreshed every 5 s."),
    status, grid);
  await refreshOverview(grid, status);
  overview.timer = setInterval(() => refreshOverview(grid, status).catch(() => {}), REFRESH_MS);
}

const SERIES = [
  ["live", "Live sessions", "live_history", "#0b57d0"],
  ["renews", "Renews per minute", "renews", "#1a7f37"],
  ["reuse", "Reuse detected per minute", "reuse_detected", "#b3261e"],
];

async function refreshOverview(grid, status) {
  if (!document.body.contains(grid)) return stopOverview();
  const r = await api("GET", "/activity");
  if (r.status !== 200) { status.replaceChildren(failure(r)); return; }
  const view = r.json;
  const xs = view.apps.length ? view.apps[0].renews.map((_, i) => view.from + i * view.bucket_seconds) : [];
  status.textContent = view.apps_total > view.apps.length
    ? `The ${view.apps.length} busiest of ${view.apps_total} apps.` : `${view.apps_total} app${view.apps_total === 1 ? "" : "s"}.`;
  const ids = view.apps.map((a) => a.app_id);
  const shown = [...grid.children].map((c) => c.dataset.app);
  if (ids.join() !== shown.join()) {
    stopCharts();
    grid.replaceChildren(...view.apps.map(appCard));
  }
  for (const app of view.apps) {
    const card = grid.querySelector(`[data-app="${app.app_id}"]`);
    const sum = (v) => v.reduce((a, b) => a + (b || 0), 0);
    const totals = { live: app.live_sessions, renews: sum(app.renews), reuse: sum(app.reuse_detected) };
    for (const [key, label, field, color] of SERIES) {
      const figure = card.querySelector(`figure.${key}`);
      figure.dataset.total = String(totals[key]);
      figure.querySelector("figcaption").textContent = key === "live"
        ? `${label}: ${totals.live} now` : `${label}: ${totals[key]} in the last hour`;
      const id = `${app.app_id}-${key}`;
      const data = [xs, app[field]];
      const existing = overview.charts.get(id);
      if (existing) existing.setData(data);
      else overview.charts.set(id, chart(figure.querySelector(".chart"), data, color, key === "live"));
    }
  }
}

function stopCharts() {
  for (const c of overview.charts.values()) c.destroy();
  overview.charts.clear();
}

function appCard(app) {
  return h("section", { class: "card", "data-app": app.app_id, "aria-labelledby": `ov-${app.app_id}` },
    h("h2", { id: `ov-${app.app_id}` }, h("a", { href: `#/apps/${app.app_id}` }, app.name)),
    h("div", { class: "charts" }, SERIES.map(([key]) =>
      h("figure", { class: `chart-box ${key}` }, h("figcaption", {}), h("div", { class: "chart", "aria-hidden": "true" })))));
}

// A small uPlot line chart that fits its box; with `points`, each sample is marked too, so
// that a lone one (live sessions counted once) shows.
function chart(el, data, color, points) {
  const width = Math.max(200, Math.floor(el.getBoundingClientRect().width) || 300);
  const axis = { stroke: "#59636e", grid: { stroke: "#eaeef2", width: 1 }, ticks: { show: false } };
  return new uPlot({
    width, height: 140, legend: { show: false }, cursor: { show: false },
    scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(1, max)] } },
    series: [{}, { stroke: color, fill: color + "22", width: 2, spanGaps: true, points: { show: points, size: 5, fill: color } }],
    axes: [{ ...axis, space: 60 }, { ...axis, size: 36 }],
  }, data, el);
}

// Charts follow the page's width.
window.addEventListener("resize", () => {
  for (const c of overview.charts.values()) {
    const box = c.root.parentElement;
    if (box) c.setSize({ width: Math.max(200, Math.floor(box.getBoundingClientRect().width)), height: 140 });
  }
});

// ---------------------------------------------------------------- routing

async function route() {
  if (!state.csrf) return;
  stopOverview();
  const hash = location.hash || "#/apps";
  const match = /^#\/apps\/([0-9A-Za-z]{26})(\/(sessions|events|webhook))?(\?(.*))?$/.exec(hash);
  const query = new URLSearchParams((match && match[5]) || "");
  try {
    if (hash === "#/overview") await overviewPage();
    else if (!match) await appsPage();
    else if (match[3] === "sessions") await sessionsPage(match[1], query.get("sub") || "");
    else if (match[3] === "events") await eventsPage(match[1], query.get("kind") || "");
    else if (match[3] === "webhook") await webhookPage(match[1]);
    else await appPage(match[1]);
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
    signedIn(true);
    route();
  } else {
    signIn();
  }
}

document.addEventListener("DOMContentLoaded", boot);
