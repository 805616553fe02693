use std::io::Write;
use std::path::PathBuf;

use super::*;
use crate::Settings;

fn example(seed: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../../deploy/compat/seed-{seed}.toml"))
}

/// Loads `toml` as a configuration file, as `--config` does.
fn load(toml: &str) -> Result<Vec<Arc<CompatRoute>>, String> {
    let mut file = tempfile::NamedTempFile::with_suffix(".toml").unwrap();
    file.write_all(toml.as_bytes()).unwrap();
    let settings = Settings::load(Some(file.path())).map_err(|e| e.to_string())?;
    compile(&settings.compat).map_err(|e| e.to_string())
}

const ROUTE: &str = r#"
[[compat.routes]]
path = "/api/refresh"
token = "body:refreshToken"
app = "kid"
[compat.routes.response]
token = "$auth_token"
refreshToken = "$refresh_token"
"#;

#[test]
fn every_shipped_example_loads() {
    for seed in ["000", "001", "002", "003"] {
        let settings = Settings::load(Some(&example(seed))).unwrap();
        let routes = compile(&settings.compat).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        assert_eq!(routes.len(), 1, "seed {seed}");
        assert_eq!(routes[0].name, format!("seed-{seed}"));
    }
}

#[test]
fn field_order_and_case_survive_the_configuration_loader() {
    let settings = Settings::load(Some(&example("003"))).unwrap();
    let route = &compile(&settings.compat).unwrap()[0];
    let body = route.response.render(&|name| Value::String(name.to_uppercase()));
    assert_eq!(
        body,
        r#"{"status":200,"message":"Token refreshed successfully","data":{"tokens":{"accessToken":"AUTH_TOKEN","refreshToken":"REFRESH_TOKEN"}}}"#
    );
    let missing = route.error(ErrorKind::MissingToken);
    assert_eq!(missing.status, StatusCode::BAD_REQUEST);
    let rendered = missing.body.render(&|name| match name {
        "status" => Value::from(400),
        other => Value::String(other.into()),
    });
    assert_eq!(rendered, r#"{"status":400,"message":"message"}"#);
}

use serde_json::Value;

#[test]
fn defaults_fill_what_a_route_leaves_out() {
    let route = &load(ROUTE).unwrap()[0];
    assert_eq!(route.name, "compat.routes[0]");
    assert_eq!(route.method, Method::POST);
    assert_eq!(route.mode, RenewMode::FollowApp);
    assert!(!route.require_bearer);
    let reuse = route.error(ErrorKind::ReuseDetected);
    assert_eq!(reuse.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reuse.code, "reuse_detected");
    let unavailable = route.error(ErrorKind::Unavailable);
    assert_eq!(unavailable.status, StatusCode::SERVICE_UNAVAILABLE);
}

#[test]
fn mistakes_are_refused_naming_their_key() {
    let cases: &[(&str, &str, &str)] = &[
        ("path = \"/api/refresh\"", "path = \"api/refresh\"", "compat.routes[0].path: must start with /"),
        ("path = \"/api/refresh\"", "path = \"/api/{id}\"", "compat.routes[0].path: must be a literal path"),
        ("path = \"/api/refresh\"", "path = \"/app/x/refresh\"", "compat.routes[0].path: \"/app/x/refresh\" is inside the built-in API"),
        ("path = \"/api/refresh\"", "path = \"/root/apps\"", "compat.routes[0].path: \"/root/apps\" is inside the built-in API"),
        ("path = \"/api/refresh\"", "path = \"/healthz\"", "compat.routes[0].path: \"/healthz\" is a built-in endpoint"),
        ("path = \"/api/refresh\"", "path = \"/a//b\"", "compat.routes[0].path: must not contain empty"),
        ("path = \"/api/refresh\"\n", "", "compat.routes[0].path: is required"),
        ("token = \"body:refreshToken\"", "token = \"cookie:rt\"", "compat.routes[0].token: must be \"body:FIELD\" or \"header:NAME\", not \"cookie:rt\""),
        ("token = \"body:refreshToken\"", "token = \"header:bad header\"", "compat.routes[0].token: \"bad header\" is not a header name"),
        ("token = \"body:refreshToken\"", "token = \"body:\"", "compat.routes[0].token: the body field must be 1 to 64"),
        ("app = \"kid\"", "app = \"my-app\"", "compat.routes[0].app: must be \"kid\" or an app id"),
        ("app = \"kid\"", "app = \"kid\"\nmethod = \"TRACE\"", "compat.routes[0].method: must be one of GET, POST, PUT, PATCH, DELETE, not \"TRACE\""),
        ("app = \"kid\"", "app = \"kid\"\nmethod = \"GET\"", "compat.routes[0].token: a GET route has no body"),
        ("app = \"kid\"", "app = \"kid\"\nrotate = \"no\"", "compat.routes[0].rotate: must be true or false, not a string"),
        ("app = \"kid\"", "app = \"kid\"\ncolour = \"red\"", "compat.routes[0].colour: unknown key"),
        ("token = \"body:refreshToken\"", "token = \"header:Authorization\"\nrequire_bearer = true", "compat.routes[0].token: the Authorization header carries the bearer"),
        ("refreshToken = \"$refresh_token\"", "", "compat.routes[0].response: must contain \"$refresh_token\""),
        ("refreshToken = \"$refresh_token\"", "refreshToken = \"$refresh\"", "compat.routes[0].response.refreshToken: unknown placeholder `$refresh`"),
        ("token = \"$auth_token\"", "t = 1", "compat.routes[0].response: must contain \"$auth_token\""),
        ("refreshToken = \"$refresh_token\"", "refreshToken = \"$refresh_token\"\n[compat.routes.errors]\nnope = { status = 400 }", "compat.routes[0].errors.nope: unknown key"),
        ("refreshToken = \"$refresh_token\"", "refreshToken = \"$refresh_token\"\n[compat.routes.errors]\ninvalid_token = { status = 200 }", "compat.routes[0].errors.invalid_token.status: must be from 400 to 599"),
        ("refreshToken = \"$refresh_token\"", "refreshToken = \"$refresh_token\"\n[compat.routes.errors]\nunavailable = { status = 429 }", "compat.routes[0].errors.unavailable.status: must be from 500 to 599"),
        ("refreshToken = \"$refresh_token\"", "refreshToken = \"$refresh_token\"\n[compat.routes.errors]\ninternal = { status = 401 }", "compat.routes[0].errors.internal.status: must be from 500 to 599"),
        ("refreshToken = \"$refresh_token\"", "refreshToken = \"$refresh_token\"\n[compat.routes.errors]\nbody = { error = \"$auth_token\" }", "compat.routes[0].errors.body.error: unknown placeholder `$auth_token`"),
        ("refreshToken = \"$refresh_token\"", "refreshToken = \"$refresh_token\"\n[compat.routes.errors]\ninternal = { message = 5 }", "compat.routes[0].errors.internal.message: must be a string, not an integer"),
    ];
    for (from, to, want) in cases {
        assert!(ROUTE.contains(from), "{from}");
        let toml = ROUTE.replacen(from, to, 1);
        let err = load(&toml).expect_err(want);
        assert!(err.starts_with(want), "got: {err}\nwant: {want}");
    }
}

#[test]
fn a_non_rotating_route_may_leave_out_the_refresh_token() {
    let toml = ROUTE
        .replace("refreshToken = \"$refresh_token\"", "")
        .replace("app = \"kid\"", "app = \"kid\"\nrotate = false");
    let route = &load(&toml).unwrap()[0];
    assert_eq!(route.mode, RenewMode::KeepRefreshToken);
}

#[test]
fn two_routes_cannot_share_a_path() {
    let second = ROUTE
        .replace("\"body:refreshToken\"", "\"header:x-refresh\"")
        .replace("app = \"kid\"", "app = \"kid\"\nmethod = \"PUT\"");
    let err = load(&format!("{ROUTE}\n{second}")).unwrap_err();
    assert!(
        err.starts_with(
            "compat.routes[1].path: \"/api/refresh\" is already the path of compat.routes[0]"
        ),
        "{err}"
    );
}

#[test]
fn shapes_are_refused_naming_their_key() {
    let cases: &[(&str, &str)] = &[
        ("[compat]\nroutes = [1]", "compat.routes[0]: must be a table, not an integer"),
        ("[compat]\nroutes = [[1]]", "compat.routes[0]: must be a table, not an array"),
        (&ROUTE.replace("app = \"kid\"", "app = 5"), "compat.routes[0].app: must be a string, not an integer"),
        (&ROUTE.replace("[compat.routes.response]\ntoken = \"$auth_token\"\nrefreshToken = \"$refresh_token\"\n", ""), "compat.routes[0].response: is required"),
        (&ROUTE.replace("app = \"kid\"", "app = \"kid\"\nerrors = 5"), "compat.routes[0].errors: must be a table, not an integer"),
        (&format!("{ROUTE}[compat.routes.errors]\ninternal = 5\n"), "compat.routes[0].errors.internal: must be a table, not an integer"),
        (&format!("{ROUTE}[compat.routes.errors]\ninternal = {{ status = \"500\" }}\n"), "compat.routes[0].errors.internal.status: must be an integer, not a string"),
        (&format!("{ROUTE}[compat.routes.errors]\ninternal = {{ status = 500.0 }}\n"), "compat.routes[0].errors.internal.status: must be an integer, not a float"),
    ];
    for (toml, want) in cases {
        let err = load(toml).expect_err(want);
        assert!(err.starts_with(want), "got: {err}\nwant: {want}");
    }
}
