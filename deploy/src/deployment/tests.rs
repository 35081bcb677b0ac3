//! Tests of deployment files: parsing, validation errors at line and column, selection.

use super::*;

fn env(name: &str) -> Option<OsString> {
    match name {
        "HOME" => Some("/home/u".into()),
        _ => None,
    }
}

fn parse(text: &str) -> Result<Deployment, DeploymentError> {
    Deployment::parse(Path::new("/srv/deploy/fleet.toml"), text, &env)
}

fn err(text: &str) -> String {
    parse(text).expect_err("should fail").to_string()
}

const ISSUE_SHAPE: &str = r#"
[operating-system.base]              # named declarations, shared by machines
host-name = "web"
timezone = "Etc/UTC"
packages = ["./pkgs/hello"]
files = { "motd" = "Welcome\n" }
services = [{ name = "hello", start = "...", stop = "..." }]
file-systems = [{ device = "/dev/vda1", mount-point = "/", type = "ext4" }]

[[machine]]
name = "web1"
tags = ["web"]
operating-system = { inherit = "base", host-name = "web1" }   # or just "base"
environment = "managed-host"         # or "local"
[machine.configuration]
host-name = "203.0.113.7"
port = 22
user = "root"
identity = "~/.ssh/id_ed25519"
host-key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDVHkdCT6mGqEKxBnRWWvj5Lq1LcObrY6rUJ2cUpuHiN"
root = "/"                           # where the host's store and state live (a directory for tests)
"#;

#[test]
fn the_issue_shape_parses_with_defaults() {
    let d = parse(ISSUE_SHAPE).unwrap();
    assert_eq!(d.machines.len(), 1);
    let m = &d.machines[0];
    assert_eq!(m.name, "web1");
    assert_eq!(m.tags, ["web"]);
    assert_eq!(m.declaration.as_deref(), Some("base"));
    assert_eq!(m.environment, Environment::ManagedHost);
    assert_eq!(m.os.host_name, "web1");
    assert_eq!(m.os.timezone, "Etc/UTC");
    assert_eq!(m.os.locale, "en_US.utf8");
    assert_eq!(m.os.packages, [PathBuf::from("/srv/deploy/pkgs/hello")]);
    assert_eq!(m.os.files["motd"], EtcFile::Text("Welcome\n".into()));
    assert_eq!(m.os.services[0].stop.as_deref(), Some("..."));
    assert_eq!(m.os.file_systems[0].fs_type, "ext4");
    assert!(m.os.file_systems[0].mount);
    let c = &m.configuration;
    assert_eq!(c.host_name.as_deref(), Some("203.0.113.7"));
    assert_eq!(c.system, this_system());
    assert!(c.build_locally && c.authorize && c.safety_checks && !c.allow_downgrades);
    assert_eq!((c.port, c.user.as_deref()), (Some(22), Some("root")));
    assert_eq!(c.identity.as_deref(), Some(Path::new("/home/u/.ssh/id_ed25519")));
    assert_eq!(c.root, PathBuf::from("/"));
    assert_eq!(c.confirm_timeout, Some(Duration::from_secs(30)));
}

#[test]
fn unknown_key_has_line_and_column() {
    let text = "[[machine]]\nname = \"a\"\noperating-system = \"x\"\nenviroment = \"local\"\n";
    let e = err(text);
    assert!(e.starts_with("/srv/deploy/fleet.toml:4:1: unknown field `enviroment`"), "{e}");
}

#[test]
fn wrong_type_has_line_and_column() {
    let text = "[operating-system.b]\nhost-name = \"h\"\n[[machine]]\nname = \"a\"\n\
                operating-system = \"b\"\nenvironment = \"local\"\n[machine.configuration]\n\
                port = \"22\"\n";
    let e = err(text);
    assert!(e.starts_with("/srv/deploy/fleet.toml:8:8: invalid type: string"), "{e}");
}

#[test]
fn unknown_key_inside_inline_os_has_position() {
    let text = "[[machine]]\nname = \"a\"\nenvironment = \"local\"\n\
                operating-system = { host-nam = \"x\" }\n";
    let e = err(text);
    assert!(e.starts_with("/srv/deploy/fleet.toml:4:"), "{e}");
    assert!(e.contains("unknown field `host-nam`"), "{e}");
}

#[test]
fn unknown_declaration_and_cycles() {
    let e =
        err("[[machine]]\nname = \"a\"\nenvironment = \"local\"\noperating-system = \"nope\"\n");
    assert!(e.starts_with("/srv/deploy/fleet.toml:4:20: no [operating-system.nope]"), "{e}");
    let text = "[operating-system.a]\ninherit = \"b\"\n[operating-system.b]\ninherit = \"c\"\n\
                [operating-system.c]\ninherit = \"a\"\n\
                [[machine]]\nname = \"m\"\nenvironment = \"local\"\noperating-system = \"a\"\n";
    let e = err(text);
    assert!(e.contains("operating-system inheritance cycle: a -> b -> c -> a"), "{e}");
    assert!(e.starts_with("/srv/deploy/fleet.toml:6:11:"), "{e}");
}

#[test]
fn inheritance_chain_overrides_fields_whole() {
    let text = r#"
[operating-system.base]
timezone = "Europe/Paris"
packages = ["/gnu/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-coreutils"]
files = { motd = "base\n", issue = "x" }
[operating-system.web]
inherit = "base"
files = { motd = "web\n" }
[[machine]]
name = "w1"
environment = "local"
operating-system = { inherit = "web", locale = "fr_FR.utf8" }
"#;
    let d = parse(text).unwrap();
    let os = &d.machines[0].os;
    assert_eq!(os.host_name, "w1");
    assert_eq!(os.timezone, "Europe/Paris");
    assert_eq!(os.locale, "fr_FR.utf8");
    assert_eq!(os.files.len(), 1);
    assert_eq!(
        os.packages[0],
        PathBuf::from("/gnu/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-coreutils")
    );
    assert_eq!(
        d.machines[0].configuration.root,
        PathBuf::from("/home/u/.local/share/ferry/hosts/w1")
    );
}

#[test]
fn local_root_defaults_and_resolution() {
    let text = "[[machine]]\nname = \"a\"\nenvironment = \"local\"\noperating-system = {}\n\
                [machine.configuration]\nroot = \"../hosts/a\"\n";
    let d = parse(text).unwrap();
    assert_eq!(d.machines[0].configuration.root, PathBuf::from("/srv/hosts/a"));
    let xdg = |n: &str| match n {
        "XDG_DATA_HOME" => Some(OsString::from("/data")),
        _ => None,
    };
    let text = "[[machine]]\nname = \"a\"\nenvironment = \"local\"\noperating-system = {}\n";
    let d = Deployment::parse(Path::new("f.toml"), text, &xdg).unwrap();
    assert_eq!(d.machines[0].configuration.root, PathBuf::from("/data/ferry/hosts/a"));
}

#[test]
fn managed_host_needs_host_name_and_absolute_root() {
    let e = err("[[machine]]\nname = \"a\"\noperating-system = {}\n");
    assert!(e.contains("needs `host-name`"), "{e}");
    let e = err("[[machine]]\nname = \"a\"\noperating-system = {}\n[machine.configuration]\n\
                 host-name = \"h\"\nroot = \"relative\"\n");
    assert!(e.starts_with("/srv/deploy/fleet.toml:6:8:"), "{e}");
}

#[test]
fn confirm_timeout_forms() {
    let base = "[[machine]]\nname = \"a\"\nenvironment = \"local\"\noperating-system = {}\n\
                [machine.configuration]\n";
    let get = |v: &str| {
        parse(&format!("{base}confirm-timeout = {v}\n"))
            .map(|d| d.machines[0].configuration.confirm_timeout)
    };
    assert_eq!(get("false").unwrap(), None);
    assert_eq!(get("true").unwrap(), Some(DEFAULT_CONFIRM_TIMEOUT));
    assert_eq!(get("5").unwrap(), Some(Duration::from_secs(5)));
    assert!(get("-1").is_err());
    assert!(get("\"x\"").unwrap_err().to_string().contains("false to switch confirmation off"));
}

#[test]
fn etc_files_services_health_checks() {
    let text = r#"
[[machine]]
name = "a"
environment = "local"
[machine.operating-system]
files = { "ssh/sshd_config" = { source = "files/sshd" }, motd = "hi" }
services = [{ name = "b", start = "x", requirements = ["a"] }, { name = "a", start = "y" }]
health-checks = [{ command = "true" }, { tcp = 22, timeout = 2 }, { http = "http://{host}/", status = 204 }]
"#;
    let d = parse(text).unwrap();
    let os = &d.machines[0].os;
    assert_eq!(
        os.files["ssh/sshd_config"],
        EtcFile::Source(PathBuf::from("/srv/deploy/files/sshd"))
    );
    let order: Vec<&str> =
        service_order(&os.services).unwrap().iter().map(|s| s.name.as_str()).collect();
    assert_eq!(order, ["a", "b"]);
    assert_eq!(os.health_checks.len(), 3);
    assert!(os.health_checks[0].runs_on_host());
    assert_eq!(
        os.health_checks[1],
        HealthCheck::Tcp { host: None, port: 22, timeout: Duration::from_secs(2) }
    );
    let bad = "[[machine]]\nname = \"a\"\nenvironment = \"local\"\n[machine.operating-system]\n\
               files = { \"../x\" = \"no\" }\n";
    assert!(err(bad).contains("invalid etc file name"));
    let bad = "[[machine]]\nname = \"a\"\nenvironment = \"local\"\n[machine.operating-system]\n\
               health-checks = [{ command = \"x\", tcp = 1 }]\n";
    assert!(err(bad).starts_with("/srv/deploy/fleet.toml:5:18:"), "{}", err(bad));
    let bad = "[[machine]]\nname = \"a\"\nenvironment = \"local\"\n[machine.operating-system]\n\
               services = [{ name = \"a\", start = \"x\", requirements = [\"a\"] }]\n";
    assert!(err(bad).contains("service requirement cycle: a -> a"), "{}", err(bad));
    let bad = "[[machine]]\nname = \"a\"\nenvironment = \"local\"\n[machine.operating-system]\n\
               services = [{ name = \"a\", start = \"x\", requirements = [\"zz\"] }]\n";
    assert!(err(bad).contains("requires 'zz', which is not declared"));
}

#[test]
fn duplicate_machines_and_selection() {
    let e = err("[[machine]]\nname = \"a\"\nenvironment = \"local\"\noperating-system = {}\n\
                 [[machine]]\nname = \"a\"\nenvironment = \"local\"\noperating-system = {}\n");
    assert!(e.starts_with("/srv/deploy/fleet.toml:6:8: duplicate machine name 'a'"), "{e}");
    let text = "[[machine]]\nname = \"a\"\ntags=[\"web\"]\nenvironment = \"local\"\noperating-system = {}\n\
                [[machine]]\nname = \"b\"\nenvironment = \"local\"\noperating-system = {}\n\
                [[machine]]\nname = \"c\"\ntags=[\"web\", \"eu\"]\nenvironment = \"local\"\noperating-system = {}\n";
    let d = parse(text).unwrap();
    let names = |on: Option<&str>| -> Vec<String> {
        d.select(on).unwrap().iter().map(|m| m.name.clone()).collect()
    };
    assert_eq!(names(None), ["a", "b", "c"]);
    assert_eq!(names(Some("@web")), ["a", "c"]);
    assert_eq!(names(Some("c,b")), ["b", "c"]);
    assert_eq!(names(Some("@eu,a")), ["a", "c"]);
    let known = || vec!["a".to_owned(), "b".to_owned(), "c".to_owned()];
    assert_eq!(
        d.select(Some("zz")).unwrap_err(),
        SelectError::UnknownName { name: "zz".into(), suggestion: None, known: known() }
    );
    assert_eq!(
        d.select(Some("@db")).unwrap_err(),
        SelectError::UnknownTag {
            tag: "db".into(),
            suggestion: None,
            known: vec!["eu".into(), "web".into()]
        }
    );
    assert_eq!(d.select(Some(",")).unwrap_err(), SelectError::Empty);
    // Did you mean: the closest name or tag, and what exists.
    assert_eq!(
        d.select(Some("@wbe")).unwrap_err().to_string(),
        "no machine has the tag 'wbe'; did you mean '@web'? (tags: eu, web)"
    );
    assert_eq!(
        d.select(Some("A")).unwrap_err().to_string(),
        "no machine named 'A' in the deployment file; did you mean 'a'? (machines: a, b, c)"
    );
    // Globs match names; one that matches nothing is an error.
    assert_eq!(names(Some("?")), ["a", "b", "c"]);
    assert_eq!(names(Some("*,@web")), ["a", "b", "c"]);
    assert!(d.select(Some("[ab]*")).is_err(), "no character classes: '[' is literal");
    assert_eq!(
        d.select(Some("web*")).unwrap_err().to_string(),
        "no machine matches 'web*' (machines: a, b, c)"
    );
}

#[test]
fn the_examples_parse() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let demo = Deployment::parse(
        &dir.join("demo.toml"),
        include_str!("../../../examples/demo.toml"),
        &env,
    )
    .unwrap();
    assert_eq!(demo.machines.len(), 2);
    for m in &demo.machines {
        assert_eq!(m.environment, Environment::Local);
        assert_eq!(m.declaration.as_deref(), Some("demo"));
        assert_eq!(m.os.host_name, m.name);
        assert_eq!(m.configuration.confirm_timeout, None);
        assert_eq!(
            m.configuration.root,
            PathBuf::from(format!("/home/u/.local/share/ferry/hosts/{}", m.name))
        );
    }
    let ssh =
        Deployment::parse(&dir.join("ssh.toml"), include_str!("../../../examples/ssh.toml"), &env)
            .unwrap();
    let names: Vec<&str> =
        ssh.select(Some("@web")).unwrap().iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["web1", "web2"]);
    let db1 = &ssh.machines[2];
    assert!(db1.configuration.allow_downgrades);
    assert_eq!(db1.configuration.user.as_deref(), Some("deploy"));
    assert_eq!(db1.os.file_systems.len(), 2);
    assert_eq!(ssh.machines[1].configuration.port, Some(2222));
    assert_eq!(ssh.machines[0].os.health_checks.len(), 3);
}

#[test]
fn local_machines_need_their_own_roots() {
    let e = err("[[machine]]\nname = \"a\"\nenvironment = \"local\"\noperating-system = {}\n\
                 [machine.configuration]\nroot = \"/r\"\n\
                 [[machine]]\nname = \"b\"\nenvironment = \"local\"\noperating-system = {}\n\
                 [machine.configuration]\nroot = \"/r/\"\n");
    assert!(e.contains("machines 'a' and 'b' are both local with the root /r"), "{e}");
}

#[test]
fn line_column_counts_characters() {
    assert_eq!(line_column("ab\ncdé\nf", 0), (1, 1));
    assert_eq!(line_column("ab\ncdé\nf", 3), (2, 1));
    assert_eq!(line_column("ab\ncdé\nf", 8), (3, 1));
    assert_eq!(line_column("ab\ncdé\nf", 7), (2, 4));
}

const NIX_HELLO: &str = "/nix/store/wzqpwja0d0a4jrb0y2rd2ljm2acnsjff-hello";
const GUIX_HELLO: &str = "/gnu/store/wzqpwja0d0a4jrb0y2rd2ljm2acnsjff-hello";

#[test]
fn a_store_path_from_another_store_dir_is_an_error_at_its_place() {
    // The issue's case: a Nix path in a ferry deployment (store dir /gnu/store) was re-added
    // as a /gnu/store path with its references lost.
    let text = format!(
        "[operating-system.a]\npackages = [\"./pkgs/x\", \"{NIX_HELLO}\"]\n[[machine]]\n\
         name = \"m\"\nenvironment = \"local\"\noperating-system = \"a\"\n"
    );
    let e = err(&text);
    assert_eq!(
        e,
        format!(
            "/srv/deploy/fleet.toml:2:25: {NIX_HELLO} is in /nix/store, but this deployment's \
             store (ferry) keeps its paths in /gnu/store (`store = \"nix\"` deploys from Nix's \
             store)"
        )
    );
    // store = "nix": Guix paths are the wrong ones, in `system` too.
    let text = format!(
        "store = \"nix\"\n[operating-system.a]\nsystem = \"{GUIX_HELLO}\"\nswitch = [\"x\"]\n\
         [[machine]]\nname = \"m\"\nenvironment = \"local\"\noperating-system = \"a\"\n"
    );
    let e = err(&text);
    assert!(e.starts_with("/srv/deploy/fleet.toml:3:10: /gnu/store/wzqp"), "{e}");
    assert!(e.contains("store (nix) keeps its paths in /nix/store"), "{e}");
    // ferry's store dir chosen on the command line is the deployment's.
    let choice = StoreChoice { kind: None, ferry_store_dir: StoreDir::nix() };
    let text = format!(
        "[operating-system.a]\npackages = [\"{NIX_HELLO}\"]\n[[machine]]\nname = \"m\"\n\
         environment = \"local\"\noperating-system = \"a\"\n"
    );
    let d = Deployment::parse_with(Path::new("/srv/f.toml"), &text, &env, &choice).unwrap();
    assert_eq!(d.machines[0].os.packages, [PathBuf::from(NIX_HELLO)]);
    assert_eq!((d.store, d.store_dir.as_str()), (None, "/nix/store"));
}

#[test]
fn a_system_built_by_nix_with_its_switch_commands() {
    let text = format!(
        "store = \"nix\"\n[operating-system.web]\nsystem = \"{NIX_HELLO}\"\n\
         switch = [\"bin/switch-to-configuration\", \"switch\"]\n\
         boot-switch = [\"bin/switch-to-configuration\", \"boot\"]\n\
         health-checks = [{{ command = \"true\" }}]\n\
         [[machine]]\nname = \"m\"\nenvironment = \"local\"\noperating-system = \"web\"\n\
         [[machine]]\nname = \"n\"\nenvironment = \"local\"\n\
         operating-system = {{ inherit = \"web\", profile = \"/nix/var/nix/profiles/web\" }}\n"
    );
    let d = parse(&text).unwrap();
    assert_eq!((d.store, d.store_dir.as_str()), (Some(DbKind::Nix), "/nix/store"));
    let p = d.machines[0].os.prebuilt.clone().unwrap();
    assert_eq!(p.path, NIX_HELLO);
    assert_eq!(p.switch, ["bin/switch-to-configuration", "switch"]);
    assert_eq!(p.boot_switch.unwrap(), ["bin/switch-to-configuration", "boot"]);
    assert_eq!(p.profile, "/nix/var/nix/profiles/system");
    assert_eq!(d.machines[1].os.prebuilt.as_ref().unwrap().profile, "/nix/var/nix/profiles/web");
    assert_eq!(d.machines[0].os.health_checks.len(), 1);

    let machine = "[[machine]]\nname = \"m\"\nenvironment = \"local\"\noperating-system = \"a\"\n";
    // ferry's builder cannot write into Nix's store.
    let e = err(&format!("store = \"nix\"\n[operating-system.a]\nhost-name = \"h\"\n{machine}"));
    assert!(e.starts_with("/srv/deploy/fleet.toml:7:20: the deployment's store is nix's"), "{e}");
    let e = err(&format!("[operating-system.a]\nsystem = \"{GUIX_HELLO}\"\n{machine}"));
    assert!(e.starts_with("/srv/deploy/fleet.toml:2:10: a `system` needs its `switch`"), "{e}");
    let e = err(&format!(
        "[operating-system.a]\nsystem = \"{GUIX_HELLO}\"\nswitch = [\"s\"]\n\
         packages = [\"./p\"]\n{machine}"
    ));
    assert!(e.contains("`packages` is for ferry's builder"), "{e}");
    let e = err(&format!("[operating-system.a]\nswitch = [\"s\"]\n{machine}"));
    assert!(e.starts_with("/srv/deploy/fleet.toml:2:10: `switch` applies to a `system`"), "{e}");
    let e = err(&format!("store = \"lix\"\n{machine}"));
    assert!(e.starts_with("/srv/deploy/fleet.toml:1:9: unknown store 'lix'"), "{e}");
    let choice = StoreChoice { kind: Some(DbKind::Guix), ..StoreChoice::default() };
    let e = Deployment::parse_with(
        Path::new("/srv/f.toml"),
        &format!("store = \"nix\"\n{machine}"),
        &env,
        &choice,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("the file says store = \"nix\", the command line --store guix"), "{e}");
}

const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDVHkdCT6mGqEKxBnRWWvj5Lq1LcObrY6rUJ2cUpuHiN";

fn ssh_machine(config: &str) -> String {
    format!(
        "[[machine]]\nname = \"a\"\noperating-system = {{}}\n[machine.configuration]\n\
         host-name = \"web\"\n{config}\n"
    )
}

#[test]
fn host_key_takes_the_bare_key_or_the_keyscan_line() {
    for given in [
        KEY.to_owned(),
        format!("{KEY} root@web"),
        format!("[203.0.113.7]:2222 {KEY}"),
        format!("203.0.113.7 {KEY}"),
    ] {
        let d = parse(&ssh_machine(&format!("host-key = \"{given}\""))).unwrap();
        assert_eq!(d.machines[0].configuration.host_key.as_deref(), Some(KEY), "{given}");
    }
    // A multi-line paste of ssh-keyscan's output with its comment line.
    let pasted =
        format!("host-key = '''\n# 203.0.113.7:22 SSH-2.0-OpenSSH_9.2\n203.0.113.7 {KEY}\n'''");
    let d = parse(&ssh_machine(&pasted)).unwrap();
    assert_eq!(d.machines[0].configuration.host_key.as_deref(), Some(KEY));
    let c = &d.machines[0].configuration;
    assert_eq!((c.port, c.user.as_deref(), c.ssh_config.as_deref()), (None, None, None));
}

#[test]
fn bad_host_keys_are_refused_at_their_line_and_column() {
    // The key data cut short: the column of the data.
    let cut = &KEY[..50];
    let e = err(&ssh_machine(&format!("host-key = \"[h]:22 {cut}\"")));
    let col = "host-key = \"[h]:22 ssh-ed25519 ".len() + 1;
    assert!(
        e.starts_with(&format!(
            "/srv/deploy/fleet.toml:6:{col}: host-key: not a valid ssh-ed25519 key"
        )),
        "{e}"
    );
    let e = err(&ssh_machine("host-key = \"AAAAC3NzaC1lZDI1NTE5\""));
    assert!(
        e.starts_with(
            "/srv/deploy/fleet.toml:6:13: host-key: \"AAAAC3NzaC1lZDI1NTE5\" is not a key type"
        ),
        "{e}"
    );
    assert!(e.contains("ssh-keyscan"), "{e}");
    let e = err(&ssh_machine("host-key = \"web ssh-ed25519\""));
    assert!(e.contains("the key data is missing"), "{e}");
    let two = format!("host-key = \"\"\"\nh {KEY}\nh {KEY}\n\"\"\"");
    let e = err(&ssh_machine(&two));
    assert!(e.starts_with("/srv/deploy/fleet.toml:8:1: host-key: several keys"), "{e}");
}

#[test]
fn identity_must_be_the_private_key_and_ssh_config_is_a_path() {
    let e = err(&ssh_machine("identity = \"~/.ssh/id_ed25519.pub\""));
    assert!(
        e.starts_with(
            "/srv/deploy/fleet.toml:6:12: identity = \"~/.ssh/id_ed25519.pub\" is a public key"
        ),
        "{e}"
    );
    assert!(e.contains("identity = \"~/.ssh/id_ed25519\""), "{e}");
    let d =
        parse(&ssh_machine("ssh-config = \"ssh/config\"\nport = 2200\nuser = \"ops\"")).unwrap();
    let c = &d.machines[0].configuration;
    assert_eq!(c.ssh_config.as_deref(), Some(Path::new("/srv/deploy/ssh/config")));
    assert_eq!((c.port, c.user.as_deref()), (Some(2200), Some("ops")));
}

#[test]
fn the_hosts_store_is_auto_unless_named() {
    let machine = |store: &str| {
        format!(
            "[operating-system.a]\nhost-name = \"h\"\n[[machine]]\nname = \"m\"\n\
             environment = \"local\"\noperating-system = \"a\"\n[machine.configuration]\n{store}\n"
        )
    };
    let kind = |store: &str| parse(&machine(store)).unwrap().machines[0].configuration.host_store;
    assert_eq!(kind(""), HostStoreKind::Auto);
    assert_eq!(kind("store = \"nix\""), HostStoreKind::Nix);
    assert_eq!(kind("store = \"ferry\""), HostStoreKind::Ferry);
    assert_eq!(kind("store = \"guix\""), HostStoreKind::Guix);
    let e = err(&machine("store = \"lix\""));
    assert!(e.starts_with("/srv/deploy/fleet.toml:8:9: unknown variant `lix`"), "{e}");
}

#[test]
fn globs_and_closest_names() {
    for (pattern, name, expect) in [
        ("web*", "web1", true),
        ("web*", "web", true),
        ("web*", "db1", false),
        ("*1", "web1", true),
        ("w?b?", "web1", true),
        ("w?b?", "web12", false),
        ("*b*1", "web-eu-1", true),
        ("**", "", true),
        ("?", "", false),
    ] {
        assert_eq!(glob_match(pattern, name), expect, "{pattern} {name}");
    }
    let known = ["hostA".to_owned(), "hostB".to_owned(), "db".to_owned()];
    assert_eq!(closest("hosta", &known).as_deref(), Some("hostA"));
    assert_eq!(closest("hostC", &known).as_deref(), Some("hostA"), "the first of equals");
    assert_eq!(closest("dv", &known).as_deref(), Some("db"));
    assert_eq!(closest("zzzzz", &known), None);
}

#[test]
fn two_machines_on_one_host_and_root_warn() {
    let text = "[[machine]]\nname = \"a\"\noperating-system = {}\n[machine.configuration]\n\
                host-name = \"h1\"\n\
                [[machine]]\nname = \"b\"\noperating-system = {}\n[machine.configuration]\n\
                host-name = \"h1\"\n\
                [[machine]]\nname = \"c\"\noperating-system = {}\n[machine.configuration]\n\
                host-name = \"h1\"\nroot = \"/srv/c\"\n";
    let d = parse(text).unwrap();
    assert_eq!(d.machines.len(), 3);
    assert_eq!(
        d.warnings,
        ["/srv/deploy/fleet.toml:7:8: warning: machines 'a' and 'b' are both host h1 with the \
          root /: both deploy there and the last one wins"]
    );
}

#[test]
fn missing_local_paths_are_errors_at_their_place() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("pkg")).unwrap();
    let file = dir.path().join("d.toml");
    let text = "[operating-system.a]\npackages = [\"./pkg\", \"./nope\"]\n\
                [[machine]]\nname = \"m\"\nenvironment = \"local\"\noperating-system = \"a\"\n";
    std::fs::write(&file, text).unwrap();
    let e = Deployment::load(&file).unwrap_err().to_string();
    assert_eq!(
        e,
        format!(
            "{}:2:22: packages: no directory {}",
            file.display(),
            dir.path().join("nope").display()
        )
    );
    std::fs::create_dir(dir.path().join("nope")).unwrap();
    let text =
        format!("{text}[machine.operating-system]\nfiles = {{ motd = {{ source = \"m\" }} }}\n");
    let text = text.replace("operating-system = \"a\"\n", "");
    std::fs::write(&file, &text).unwrap();
    let e = Deployment::load(&file).unwrap_err().to_string();
    assert!(e.ends_with(&format!("files: no file {}", dir.path().join("m").display())), "{e}");
}

/// docs/deployment.md names every key of every record: the keys are read from the parser's own
/// "expected one of" errors, so a key added to a record fails here until the reference has it.
#[test]
fn the_reference_names_every_key() {
    let reference = include_str!("../../../docs/deployment.md");
    let machine = "[[machine]]\nname = \"m\"\nenvironment = \"local\"\n";
    let records = [
        ("the top level", "zzz = 1\n".to_owned()),
        ("[[machine]]", format!("{machine}operating-system = {{}}\nzzz = 1\n")),
        (
            "[machine.configuration]",
            format!("{machine}operating-system = {{}}\n[machine.configuration]\nzzz = 1\n"),
        ),
        ("an operating-system", format!("{machine}operating-system = {{ zzz = 1 }}\n")),
        ("services", format!("{machine}operating-system = {{ services = [{{ zzz = 1 }}] }}\n")),
        (
            "file-systems",
            format!("{machine}operating-system = {{ file-systems = [{{ zzz = 1 }}] }}\n"),
        ),
        (
            "health-checks",
            format!("{machine}operating-system = {{ health-checks = [{{ zzz = 1 }}] }}\n"),
        ),
        ("bootloader", format!("{machine}operating-system = {{ bootloader = {{ zzz = 1 }} }}\n")),
        ("files", format!("{machine}operating-system = {{ files = {{ a = {{ zzz = 1 }} }} }}\n")),
    ];
    for (record, text) in records {
        let e = err(&text);
        let keys = e.split(", expected ").nth(1).unwrap_or_else(|| panic!("{record}: {e}"));
        let keys = keys.trim_start_matches("one of ");
        for key in
            keys.split([',', ' ']).filter(|k| k.starts_with('`')).map(|k| k.trim_matches('`'))
        {
            assert!(
                reference.contains(&format!("`{key}`")) || reference.contains(&format!("`{key} =")),
                "docs/deployment.md does not name the key `{key}` of {record}: add its row"
            );
        }
    }
}

#[test]
fn substitute_from_takes_binary_caches_only() {
    let with = |list: &str| format!("{ISSUE_SHAPE}substitute-from = {list}\n");
    let d = parse(&with(
        r#"["s3://c?endpoint=http://127.0.0.1:9000", "file:///srv/c", "https://c.example"]"#,
    ))
    .unwrap();
    assert_eq!(d.machines[0].configuration.substitute_from.len(), 3);
    assert!(parse(ISSUE_SHAPE).unwrap().machines[0].configuration.substitute_from.is_empty());
    let e = err(&with(r#"["ssh://h"]"#));
    assert!(
        e.contains("fleet.toml:22:") && e.contains("substitute-from: a binary cache is"),
        "{e}"
    );
    let e = err(&with(r#"["s3://"]"#));
    assert!(e.contains("substitute-from: invalid target"), "{e}");
}

#[test]
fn rollout_steps_are_counts_or_percentages() {
    let machine =
        "[[machine]]\nname = \"a\"\nenvironment = \"local\"\n[machine.operating-system]\n";
    let d = parse(&format!("rollout = [1, \"25%\", \"100%\"]\n{machine}")).unwrap();
    assert_eq!(d.rollout.unwrap().to_string(), "1,25%,100%");
    assert!(parse(machine).unwrap().rollout.is_none());
    assert_eq!(
        err(&format!("rollout = [1, \"150%\"]\n{machine}")),
        "/srv/deploy/fleet.toml:1:11: rollout step '150%': more than 100%"
    );
    assert_eq!(
        err(&format!("rollout = []\n{machine}")),
        "/srv/deploy/fleet.toml:1:11: a rollout needs at least one step (e.g. 1,25%,100%)"
    );
}

#[test]
fn via_names_a_machine_or_a_relay_only_host() {
    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDVHkdCT6mGqEKxBnRWWvj5Lq1LcObrY6rUJ2cUpuHiN";
    let machine = |name: &str, via: &str| {
        format!(
            "[[machine]]\nname = \"{name}\"\n[machine.operating-system]\n\
             [machine.configuration]\nhost-name = \"{name}\"\nhost-key = \"{key}\"\n{via}\n"
        )
    };
    let relay = format!("[relay.gw]\nhost-name = \"10.0.0.5\"\nhost-key = \"{key}\"\n");
    let d = parse(&format!(
        "{relay}{}{}",
        machine("a", "via = \"gw\""),
        machine("b", "via = \"a\"\nrelay-identity = \"/root/.ssh/id_relay\"")
    ))
    .unwrap();
    assert_eq!(d.relays.len(), 1);
    assert_eq!(d.relays[0].root, Path::new(DEFAULT_RELAY_ROOT));
    assert_eq!(d.machines[0].configuration.via.as_deref(), Some("gw"));
    assert_eq!(d.machines[1].configuration.relay_identity.as_deref(), Some("/root/.ssh/id_relay"));
    let e = err(&machine("a", "via = \"nowhere\""));
    assert!(e.contains("via = \"nowhere\": not another managed-host machine"), "{e}");
    let e = err(&machine("a", "via = \"a\""));
    assert!(e.contains("via = \"a\""), "{e}");
    let e =
        err(&format!("[relay.a]\nhost-name = \"h\"\nhost-key = \"{key}\"\n{}", machine("a", "")));
    assert!(e.contains("relay 'a': an invalid name, or the name of a machine"), "{e}");
}
