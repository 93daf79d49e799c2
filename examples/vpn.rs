//! One process with sockets in two network namespaces: the VPN case from
//! the setns() articles, where a daemon keeps its uplink socket in the
//! host's network and serves clients inside a private one.
//!
//! With plain file operations on a mounted nsproxyfs:
//!
//! ```text
//! mkdir tunnel; touch tunnel/net          # a fresh network namespace
//! echo $$ > tunnel/tasks                  # the relay moves itself in
//! rmdir tunnel                            # from the root, once it is done
//! ```
//!
//! A relay process opens a UDP socket on 127.0.0.1:PORT in the host's
//! network, moves itself into `tunnel`, brings its loopback up and opens a
//! second socket on the very same address, which only works because it
//! lives in another network namespace. It relays one datagram from a
//! client in the tunnel out through its host socket. Once inside, the relay
//! sees only `tunnel` in the tree (see docs/tree.md, "What each caller
//! sees"), so the program's first process, still in the root, makes and
//! removes the container. Run as root:
//! `cargo run --example vpn -- /container_ns`.

use std::fs;
use std::io;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::ExitCode;

/// The inode of this process's network namespace, as `net:[N]`.
fn my_net() -> io::Result<String> {
    Ok(fs::read_link("/proc/self/ns/net")?.display().to_string())
}

/// Sets the loopback interface of the current network namespace up.
fn loopback_up() -> io::Result<()> {
    // Any socket will do for the interface ioctls.
    let sock = UdpSocket::bind("0.0.0.0:0")?;
    // SAFETY: ifreq is plain data; zeroed is a valid value for it.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads into `req`, which outlives the call; the
    // socket is open.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the union holds the flags SIOCGIFFLAGS just wrote.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: SIOCSIFFLAGS reads `req`, which outlives the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Moves this process into the container at `dir` by writing its pid to
/// `tasks`; the write returns once the move is done.
fn move_to(dir: &Path) -> io::Result<()> {
    fs::write(dir.join("tasks"), std::process::id().to_string())
}

/// The administrator's side: makes the tunnel, starts the relay in it, and
/// collects what the relay sends out on its uplink.
fn run(root: &Path, port: u16) -> io::Result<()> {
    let tunnel = root.join("tunnel");
    fs::create_dir(&tunnel)?;
    // Creating `net` binds a fresh namespace when the file is closed.
    let result = fs::File::create(tunnel.join("net")).and_then(|file| {
        drop(file);
        let collector = UdpSocket::bind("127.0.0.1:0")?;
        collector.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
        let status = std::process::Command::new(std::env::current_exe()?)
            .args(["relay", &root.display().to_string(), &port.to_string()])
            .arg(collector.local_addr()?.port().to_string())
            .status()?;
        if !status.success() {
            return Err(io::Error::other(format!("the relay failed: {status}")));
        }
        let mut buf = [0u8; 64];
        let (n, _) = collector.recv_from(&mut buf)?;
        println!(
            "the host received {:?} on its own network",
            String::from_utf8_lossy(&buf[..n])
        );
        Ok(())
    });
    // The relay has exited: the tunnel's namespace goes with the container.
    let removed = fs::remove_dir(&tunnel);
    result.and(removed)
}

/// The relay: opens its uplink in the host's network, moves itself into
/// the tunnel (from then on it sees only the tunnel's part of the tree),
/// opens a socket there on the same address, and forwards one datagram
/// from a client in the tunnel out through the uplink.
fn relay(root: &Path, port: u16, collector: u16) -> io::Result<()> {
    let addr = format!("127.0.0.1:{port}");
    let host_net = my_net()?;
    let uplink = UdpSocket::bind(&addr)?;
    println!("uplink socket on {addr} in {host_net}");

    move_to(&root.join("tunnel"))?;
    let tunnel_net = my_net()?;
    if tunnel_net == host_net {
        return Err(io::Error::other("the move did not change the network"));
    }
    loopback_up()?;
    let inside = UdpSocket::bind(&addr)?;
    println!("tunnel socket on {addr} in {tunnel_net}");

    let client = UdpSocket::bind("127.0.0.1:0")?;
    client.send_to(b"hello through the tunnel", &addr)?;
    let mut buf = [0u8; 64];
    let (n, _) = inside.recv_from(&mut buf)?;
    // The uplink still lives in the host's network, although the process
    // itself now lives in the tunnel's.
    uplink.send_to(&buf[..n], ("127.0.0.1", collector))?;
    println!("relayed {} bytes from {tunnel_net} to {host_net}", n);
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["relay", root, port, collector] => match (port.parse(), collector.parse()) {
            (Ok(port), Ok(collector)) => relay(Path::new(root), port, collector),
            _ => Err(io::Error::other("bad relay arguments")),
        },
        [root] => run(Path::new(root), 5555),
        [root, port] => match port.parse() {
            Ok(port) => run(Path::new(root), port),
            Err(_) => Err(io::Error::other("PORT is a number")),
        },
        _ => {
            eprintln!("usage: vpn MOUNTPOINT [PORT]");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vpn: {e}");
            ExitCode::FAILURE
        }
    }
}
