//! Networking end to end: Docker 26's default bridge with a published
//! port, a hull container and a runc container on one network, names and
//! IPv6 on a user-defined dual-stack network (Docker's embedded DNS;
//! addresses, routes, host and neighbour over IPv6), a killed VMM and a
//! killed shim, and the
//! namespaces left as they were; `ctr run --cni`. Everything runs in a private network
//! namespace (hull_tests::netns): Docker's bridge and iptables rules never
//! reach the host's. Needs KVM, root, iptables and the extracted Docker.

use std::net::{Ipv6Addr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use hull_tests::containerd::{stdout_ok, Containerd, Engine, IMAGE};
use hull_tests::docker::{Docker, DOCKER_IMAGE};
use hull_tests::netns::{enter_private, http_get, ip};
use hull_tests::{prereq, test_dir};

/// How long a published port may take to answer after `docker run -d`
/// (the container's start in the guest, then httpd's).
const SERVE_WITHIN: Duration = Duration::from_secs(90);

/// A busybox httpd serving `text` as `/`.
fn httpd(text: &str) -> String {
    format!("mkdir -p /www && echo {text} > /www/index.html && exec httpd -f -p 80 -h /www")
}

/// The user-defined network's subnets (Docker's pools start at 172.17/16).
const HULLNET_V4: &str = "172.30.0.0/24";
const HULLNET_V6: &str = "fd00:c0de::/64";

/// On the dual-stack `hullnet`, with the hull container `named` and the
/// runc container `rnamed` serving: the guest has Docker's IPv6 address
/// (usable at once, no duplicate address detection), its own link-local
/// one and Docker's default route; the host (the bridge holds the
/// gateway's address) reaches the guest's httpd over IPv6, and the guest
/// reaches the runc container's.
fn ipv6_on_hullnet(docker: &Docker) {
    let v6 = |what: &str, name: &str| {
        let format = format!("{{{{range .NetworkSettings.Networks}}}}{{{{.{what}}}}}{{{{end}}}}");
        inspect(docker, &format, name)
    };
    let hull_v6: Ipv6Addr = v6("GlobalIPv6Address", "named")
        .parse()
        .expect("Docker gave the hull container no IPv6 address");
    let runc_v6: Ipv6Addr = v6("GlobalIPv6Address", "rnamed")
        .parse()
        .expect("Docker gave the runc container no IPv6 address");
    let gateway_v6 = v6("IPv6Gateway", "named");
    let view = stdout_ok(
        &docker.docker(&[
            "exec",
            "named",
            "sh",
            "-c",
            "ip -o -6 addr show eth0; ip -6 route",
        ]),
        "docker exec named (IPv6 view)",
    );
    let global = view
        .lines()
        .find(|l| l.contains(&format!("inet6 {hull_v6}/64 scope global")))
        .unwrap_or_else(|| panic!("no {hull_v6}/64 on eth0: {view}"));
    assert!(!global.contains("tentative"), "{global}");
    assert!(
        view.contains("inet6 fe80::"),
        "no link-local address: {view}"
    );
    assert!(
        view.contains(&format!("default via {gateway_v6} dev eth0")),
        "{view}"
    );
    let answer = http_get(SocketAddr::new(hull_v6.into(), 80), SERVE_WITHIN).unwrap_or_else(|e| {
        panic!(
            "host -> hull over IPv6: {e}
the guest's view: {view}"
        )
    });
    assert!(answer.contains("hello-by-name"), "{answer}");
    let got = fetch_in(docker, "named", &format!("[{runc_v6}]"));
    assert!(
        got.contains("hello-from-runc-by-name"),
        "hull -> runc over IPv6: {got}"
    );
}

fn inspect(docker: &Docker, format: &str, what: &str) -> String {
    stdout_ok(
        &docker.docker(&["inspect", "-f", format, what]),
        "docker inspect",
    )
    .trim()
    .to_owned()
}

#[test]
fn docker_bridge_published_port_and_a_runc_neighbour_kvm() {
    prereq::require_kvm();
    enter_private();
    let dir = test_dir();
    let docker = Docker::start_networked(dir.path());

    // A hull container serving on a published port.
    let serve = httpd("hello-from-hull");
    let out = docker.docker(&[
        "run",
        "-d",
        "--name",
        "web",
        "--runtime",
        "hull",
        "-p",
        "8080:80",
        DOCKER_IMAGE,
        "sh",
        "-c",
        &serve,
    ]);
    stdout_ok(&out, "docker run -d -p 8080:80 (hull)");
    let gateway = stdout_ok(
        &docker.docker(&[
            "network",
            "inspect",
            "-f",
            "{{(index .IPAM.Config 0).Gateway}}",
            "bridge",
        ]),
        "docker network inspect bridge",
    )
    .trim()
    .to_owned();
    let published: SocketAddr = format!("{gateway}:8080").parse().expect("gateway address");
    let answer = http_get(published, SERVE_WITHIN).unwrap_or_else(|e| {
        panic!(
            "the published port: {e}\ndocker logs: {:?}",
            docker.docker(&["logs", "web"])
        )
    });
    assert!(answer.contains("hello-from-hull"), "{answer}");

    // Inside: Docker's address, MAC, gateway route and resolv.conf, on the
    // guest's kernel.
    let hull_ip = inspect(&docker, "{{.NetworkSettings.IPAddress}}", "web");
    let mac = inspect(&docker, "{{.NetworkSettings.MacAddress}}", "web");
    let view = stdout_ok(
        &docker.docker(&[
            "exec",
            "web",
            "sh",
            "-c",
            "uname -r; ip -o -4 addr show eth0; ip -o link show eth0; ip route; ip -o link show lo",
        ]),
        "docker exec web (network view)",
    );
    assert!(view.starts_with("6.1."), "not the guest's kernel: {view}");
    assert!(view.contains(&format!("inet {hull_ip}/16")), "{view}");
    assert!(view.contains(&mac), "MAC {mac} not on eth0: {view}");
    assert!(
        view.contains(&format!("default via {gateway} dev eth0")),
        "{view}"
    );
    assert!(view.contains("<LOOPBACK,UP,LOWER_UP>"), "loopback: {view}");
    let resolv_path = inspect(&docker, "{{.ResolvConfPath}}", "web");
    let resolv = std::fs::read_to_string(&resolv_path).expect("Docker's resolv.conf");
    let inside = stdout_ok(
        &docker.docker(&["exec", "web", "cat", "/etc/resolv.conf"]),
        "docker exec cat /etc/resolv.conf",
    );
    assert_eq!(
        inside, resolv,
        "the container's resolv.conf is not Docker's"
    );

    // A runc container on the same bridge: both ways.
    let serve = httpd("hello-from-runc");
    let out = docker.docker(&[
        "run",
        "-d",
        "--name",
        "neighbour",
        "--runtime",
        "runc",
        DOCKER_IMAGE,
        "sh",
        "-c",
        &serve,
    ]);
    stdout_ok(&out, "docker run -d (runc)");
    let runc_ip = inspect(&docker, "{{.NetworkSettings.IPAddress}}", "neighbour");
    let got = fetch_in(&docker, "web", &runc_ip);
    assert!(got.contains("hello-from-runc"), "hull -> runc: {got}");
    let url = format!("http://{hull_ip}/");
    let got = docker.docker(&[
        "run",
        "--rm",
        "--runtime",
        "runc",
        DOCKER_IMAGE,
        "wget",
        "-qO-",
        &url,
    ]);
    assert!(
        stdout_ok(&got, "runc -> hull").contains("hello-from-hull"),
        "{got:?}"
    );

    // A user-defined network, dual-stack: containers find each other by
    // name through Docker's embedded DNS, which the guest reaches through
    // the agent's relay; hull to hull, runc to hull, hull to runc. Then the
    // same over IPv6 by address. Docker 26 needs no daemon flag for an IPv6
    // user-defined network; without ip6tables it bridges IPv6 unfiltered.
    stdout_ok(
        &docker.docker(&[
            "network", "create", "--ipv6", "--subnet", HULLNET_V4, "--subnet", HULLNET_V6,
            "hullnet",
        ]),
        "docker network create --ipv6",
    );
    let serve = httpd("hello-by-name");
    let out = docker.docker(&[
        "run",
        "-d",
        "--name",
        "named",
        "--network",
        "hullnet",
        "--runtime",
        "hull",
        DOCKER_IMAGE,
        "sh",
        "-c",
        &serve,
    ]);
    stdout_ok(&out, "docker run -d --network hullnet (hull)");
    let serve = httpd("hello-from-runc-by-name");
    let out = docker.docker(&[
        "run",
        "-d",
        "--name",
        "rnamed",
        "--network",
        "hullnet",
        "--runtime",
        "runc",
        DOCKER_IMAGE,
        "sh",
        "-c",
        &serve,
    ]);
    stdout_ok(&out, "docker run -d --network hullnet (runc)");
    // The name is resolved by busybox's nslookup through the container's
    // resolv.conf (Docker's 127.0.0.11), then fetched by address (Debian's
    // busybox 1.35 wget crashes with -T, so no timeout flag).
    let fetch = |name: &str| {
        format!(
            "for i in $(seq 20); do \
               a=$(nslookup {name} 2>/dev/null | sed -n 's/^Address: *\\([0-9.]*\\)$/\\1/p' | tail -1); \
               [ -n \"$a\" ] && wget -qO- http://$a/ && exit 0; sleep 0.5; \
             done; nslookup {name}; exit 1"
        )
    };
    for (runtime, name, expected) in [
        ("hull", "named", "hello-by-name"),
        ("runc", "named", "hello-by-name"),
        ("hull", "rnamed", "hello-from-runc-by-name"),
    ] {
        let script = fetch(name);
        let got = docker.docker(&[
            "run",
            "--rm",
            "--network",
            "hullnet",
            "--runtime",
            runtime,
            DOCKER_IMAGE,
            "sh",
            "-c",
            &script,
        ]);
        if !got.status.success() {
            let log =
                std::fs::read_to_string(dir.path().join("containerd.log")).unwrap_or_default();
            let network: Vec<&str> = log
                .lines()
                .filter(|l| {
                    l.contains("network")
                        || l.contains("DNS")
                        || l.contains("dns")
                        || l.contains("wired")
                })
                .collect();
            panic!(
                "{runtime} -> {name} by name: {got:?}\nthe shims' network lines:\n{}",
                network.join("\n")
            );
        }
        let text = String::from_utf8_lossy(&got.stdout);
        assert!(text.contains(expected), "{runtime} -> {name}: {got:?}");
    }

    ipv6_on_hullnet(&docker);

    // Gone: the containers, their sandboxes, and everything hull made in
    // the namespaces (the tap, the redirects).
    stdout_ok(
        &docker.docker(&["rm", "-f", "web", "neighbour", "named", "rnamed"]),
        "docker rm -f",
    );
    stdout_ok(
        &docker.docker(&["network", "rm", "hullnet"]),
        "docker network rm",
    );
    docker.assert_nothing_left();
    let links = ip(&["-o", "link"]);
    assert!(!links.contains("tap0_hull"), "a tap is left: {links}");
    let out = Command::new("tc")
        .args(["qdisc", "show"])
        .output()
        .expect("run tc");
    let qdiscs = String::from_utf8_lossy(&out.stdout);
    assert!(
        !qdiscs.contains("ingress"),
        "an ingress qdisc is left: {qdiscs}"
    );
    assert!(
        !links.contains("veth"),
        "a veth is left in the bridge's namespace: {links}"
    );

    // A networked container whose VMM is SIGKILLed, then one whose shim
    // is: the task ends (containerd's `shim delete` takes the VM down after
    // a shim), Docker takes its network down, and after `docker rm` nothing
    // of it is left, the orphaned jailer included.
    killed_under_a_networked_container(&docker, "victim", "VMM", |jailer| {
        let children = std::fs::read_to_string(format!("/proc/{jailer}/task/{jailer}/children"))
            .expect("the jailer's children");
        children
            .split_whitespace()
            .next()
            .and_then(|pid| pid.parse().ok())
            .unwrap_or_else(|| panic!("no VMM under the jailer {jailer}: {children:?}"))
    });
    killed_under_a_networked_container(&docker, "orphan", "shim", |jailer| {
        let shim = parent_of(jailer);
        let exe = std::fs::read_link(format!("/proc/{shim}/exe")).expect("the shim's exe");
        assert!(
            exe.ends_with("containerd-shim-hull-v2"),
            "the jailer's parent {shim} is {}",
            exe.display()
        );
        shim
    });

    // A namespace path that does not exist: refused naming it, nothing left.
    let out = docker.containerd().ctr(&[
        "run",
        "--rm",
        "--runtime",
        "io.containerd.hull.v2",
        "--with-ns",
        "network:/var/run/netns/hull-no-such-ns",
        IMAGE,
        "nons",
        "true",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("/var/run/netns/hull-no-such-ns"),
        "ctr run with a missing netns: {out:?}"
    );
    docker.assert_nothing_left();
}

/// What `container` fetches from `http://HOST/` with busybox wget, trying
/// for up to 30 s (the server may still be starting).
fn fetch_in(docker: &Docker, container: &str, host: &str) -> String {
    let fetch = format!(
        "for i in $(seq 60); do wget -qO- http://{host}/ && exit 0; sleep 0.5; done; exit 1"
    );
    let got = docker.docker(&["exec", container, "sh", "-c", &fetch]);
    stdout_ok(&got, &format!("{container} fetching from {host}"))
}

/// Runs a networked container `name`, SIGKILLs the process `victim` picks
/// from the jailer's pid (`what` names it), and checks that the container
/// ends and, once removed, leaves no tap, veth or jailer behind.
fn killed_under_a_networked_container(
    docker: &Docker,
    name: &str,
    what: &str,
    victim: impl FnOnce(i32) -> i32,
) {
    let out = docker.docker(&[
        "run",
        "-d",
        "--name",
        name,
        "--runtime",
        "hull",
        DOCKER_IMAGE,
        "sleep",
        "600",
    ]);
    stdout_ok(&out, &format!("docker run -d {name}"));
    let jailer: i32 = inspect(docker, "{{.State.Pid}}", name)
        .parse()
        .expect("the task's pid");
    let pid = victim(jailer);
    // SAFETY: kill() with a pid and a signal number; no pointers.
    let killed = unsafe { libc::kill(pid, libc::SIGKILL) };
    assert_eq!(killed, 0, "kill -9 {pid} ({what})");
    let ended = hull_tests::poll::try_poll_until(
        Duration::from_secs(90),
        Duration::from_millis(500),
        || match inspect(docker, "{{.State.Running}}", name).as_str() {
            "false" => Ok(()),
            _ => Err(()),
        },
    );
    assert!(
        ended.is_ok(),
        "{name} still runs after its {what} was killed"
    );
    stdout_ok(
        &docker.docker(&["rm", "-f", name]),
        &format!("docker rm -f {name}"),
    );
    docker.assert_nothing_left();
    let links = ip(&["-o", "link"]);
    assert!(
        !links.contains("tap0_hull") && !links.contains("veth"),
        "left after a killed {what}: {links}"
    );
    // The jailer's supervisor is gone (or, orphaned by a killed shim, a
    // zombie waiting for the host's init to reap it).
    let gone = hull_tests::poll::try_poll_until(
        Duration::from_secs(30),
        Duration::from_millis(200),
        || match std::fs::read_to_string(format!("/proc/{jailer}/stat")) {
            Err(_) => Ok(()),
            Ok(stat) if state_of(&stat) == Some("Z") => Ok(()),
            Ok(stat) => Err(stat),
        },
    );
    assert!(
        gone.is_ok(),
        "the jailer {jailer} outlived its {what}: {gone:?}"
    );
}

/// The state letter in a `/proc/PID/stat` line.
fn state_of(stat: &str) -> Option<&str> {
    stat.rsplit(')').next()?.split_whitespace().next()
}

/// The parent of process `pid`, from `/proc/PID/stat`.
fn parent_of(pid: i32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("a process's stat");
    stat.rsplit(')')
        .next()
        .and_then(|rest| rest.split_whitespace().nth(1))
        .and_then(|ppid| ppid.parse().ok())
        .unwrap_or_else(|| panic!("no parent in {stat:?}"))
}

/// Where host-local keeps the addresses of the CNI network ./setup.sh
/// configures (scripts/engines.sh, install_cni).
const CNI_LEASES: &str = "/var/lib/cni/networks/hull";
const CNI_CONF: &str = "/etc/cni/net.d/10-hull.conflist";

/// A host server for the container to call: answers `GET /<ip>` with what
/// the container's own httpd at `<ip>:80` serves, so one request proves
/// both directions.
fn echo_back_server() -> std::thread::JoinHandle<()> {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("0.0.0.0:8089").expect("bind 8089");
    std::thread::spawn(move || {
        let (stream, _) = listener.accept().expect("the container's call");
        let mut reader = BufReader::new(stream.try_clone().expect("clone"));
        let mut line = String::new();
        reader.read_line(&mut line).expect("request line");
        let ip = line
            .split_whitespace()
            .nth(1)
            .unwrap_or("/")
            .trim_start_matches('/');
        let back = format!("{ip}:80")
            .parse()
            .map_err(|e| format!("{e}"))
            .and_then(|addr| http_get(addr, Duration::from_secs(30)));
        let body = match back {
            Ok(answer) => format!("host-got:{}", answer.lines().last().unwrap_or_default()),
            Err(e) => format!("host-failed:{e}"),
        };
        let mut stream = stream;
        let _ = write!(
            stream,
            "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
    })
}

#[test]
fn ctr_run_cni_kvm() {
    prereq::require_kvm();
    assert!(
        std::path::Path::new(CNI_CONF).is_file(),
        "{CNI_CONF} is missing: run ./setup.sh (scripts/engines.sh install_cni)"
    );
    enter_private();
    let dir = test_dir();
    let containerd = Containerd::start(Engine::Containerd17, dir.path());
    containerd.own("nonet");
    containerd.own("cni1");
    // Without a network plugin: loopback only, up, and no other interface.
    let out = containerd.ctr(&[
        "run",
        "--rm",
        "--runtime",
        "io.containerd.hull.v2",
        IMAGE,
        "nonet",
        "ip",
        "-o",
        "link",
    ]);
    let links = stdout_ok(&out, "ctr run without --cni");
    assert_eq!(links.lines().count(), 1, "more than loopback: {links}");
    assert!(links.contains("lo: <LOOPBACK,UP,LOWER_UP>"), "{links}");

    let server = echo_back_server();
    // The container serves, learns its address, and calls the host, which
    // calls it back: host-local's address, reachable both ways.
    let script = "mkdir -p /www && echo hello-over-cni > /www/index.html && httpd -p 80 -h /www; \
                  ip=$(ip -o -4 addr show eth0 | sed 's/.* inet \\([0-9.]*\\).*/\\1/'); \
                  echo ip=$ip; gw=$(ip route | sed -n 's/^default via \\([0-9.]*\\).*/\\1/p'); \
                  wget -qO- http://$gw:8089/$ip; echo";
    let out = containerd.ctr(&[
        "run",
        "--rm",
        "--cni",
        "--runtime",
        "io.containerd.hull.v2",
        IMAGE,
        "cni1",
        "sh",
        "-c",
        script,
    ]);
    let text = stdout_ok(&out, "ctr run --cni");
    server.join().expect("the host server");
    let address = text
        .lines()
        .find_map(|l| l.strip_prefix("ip="))
        .unwrap_or_else(|| panic!("no address in the container: {text}"))
        .to_owned();
    assert!(
        address.starts_with("10.88."),
        "not host-local's range: {text}"
    );
    assert!(text.contains("host-got:hello-over-cni"), "{text}");
    // ctr run --rm calls CNI DEL: the address is free again.
    let lease = std::path::Path::new(CNI_LEASES).join(&address);
    assert!(!lease.exists(), "{} is still leased", lease.display());
    let links = ip(&["-o", "link"]);
    assert!(!links.contains("tap0_hull"), "a tap is left: {links}");
    containerd.assert_no_shim_leftovers_but(&[]);
}
