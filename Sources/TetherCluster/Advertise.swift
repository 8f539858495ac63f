import Foundation
import TetherComm

/// The address a worker's ring neighbours reach it at, and the check that they can.
///
/// `--advertise` takes tcp://HOST:PORT, tcp://HOST:0 (a port free now), or the name of a network
/// interface with an optional port (`eth0`, `eth0:7071`): its IPv4 address. The interface form is what
/// containers and multi-homed hosts want; a wrong name is an error that lists the interfaces there are.
public enum Advertise {
    /// This host's interfaces with an IPv4 address, in the system's order.
    public static func interfaces() -> [(name: String, address: String)] {
        var list: UnsafeMutablePointer<ifaddrs>?
        guard getifaddrs(&list) == 0, let first = list else { return [] }
        defer { freeifaddrs(list) }
        var out: [(String, String)] = []
        for entry in sequence(first: first, next: { $0.pointee.ifa_next }) {
            guard let sa = entry.pointee.ifa_addr, sa.pointee.sa_family == UInt16(AF_INET) else { continue }
            var host = [CChar](repeating: 0, count: Int(NI_MAXHOST))
            guard getnameinfo(sa, socklen_t(MemoryLayout<sockaddr_in>.size), &host, socklen_t(host.count), nil, 0, NI_NUMERICHOST) == 0
            else { continue }
            out.append((String(cString: entry.pointee.ifa_name), String(cString: host)))
        }
        return out
    }

    /// The tcp:// address `spec` names, with a concrete port. A host name is resolved to its IPv4
    /// address (libzmq binds only addresses and interfaces); a fixed port is tried, so a port another
    /// program holds is named now rather than when the ring forms.
    /// `portWait`: seconds a taken port is tried again (a worker that just closed its own ring at it:
    /// libzmq releases the address a moment after the close).
    /// The port stays bound by the returned `holder` until the caller closes it: two workers started
    /// at once with port 0 cannot be handed the same port, and a worker whose ring links are unix
    /// sockets keeps the port it advertises as its own.
    public static func reserve(_ spec: String, portWait: Double = 0) throws -> (address: String, holder: PortHold?) {
        var address = spec
        if !spec.contains("://") {
            let parts = spec.split(separator: ":", maxSplits: 1).map(String.init)
            let port = parts.count > 1 ? parts[1] : "0"
            guard let name = parts.first, UInt16(port) != nil else {
                throw ClusterError("--advertise \(spec): give tcp://HOST:PORT or an interface name with an optional :PORT, e.g. eth0:7071")
            }
            let all = interfaces()
            guard let match = all.first(where: { $0.name == name }) else {
                if all.contains(where: { $0.address == name }) || name.split(separator: ".").count == 4 {
                    // an address given where an interface name goes
                    throw ClusterError(
                        "--advertise \(spec): an address takes the form tcp://\(name):\(port) (or give an interface name, e.g. eth0:\(port))"
                    )
                }
                let known = all.map { "\($0.name) \($0.address)" }.joined(separator: ", ")
                throw ClusterError(
                    "--advertise \(spec): no interface \(name) with an IPv4 address here; this host has \(known.isEmpty ? "none" : known)")
            }
            address = "tcp://\(match.address):\(port)"
        }
        guard address.hasPrefix("tcp://") else { return (address, nil) }  // ipc:// and the like are used as given
        guard let colon = address.lastIndex(of: ":"), let port = UInt16(address[address.index(after: colon)...]),
            case let host = String(address[address.index(address.startIndex, offsetBy: 6)..<colon]), !host.isEmpty
        else {
            throw ClusterError("--advertise \(spec): give tcp://HOST:PORT (port 0: any free port), e.g. tcp://10.0.0.2:7071")
        }
        let ip = try ipv4(of: host, for: spec)
        let deadline = ContinuousClock.now + .milliseconds(Int(portWait * 1000))
        while true {
            switch PortHold.bind(ip: ip, port: port) {
            case .success(let hold):
                return ("tcp://\(ip):\(hold.port)", hold)
            case .failure(let f) where f.code == EADDRINUSE && ContinuousClock.now < deadline:
                usleep(50_000)
            case .failure(let f) where f.code == EADDRINUSE:
                throw ClusterError(
                    "--advertise \(spec): port \(port) is taken on this host (another worker or program listens there); give another port, or :0 for any free one"
                )
            case .failure(let f) where f.code == EADDRNOTAVAIL || f.code == ENODEV:
                throw ClusterError(
                    "--advertise \(spec): \(ip) is not an address of this host; give one of its own: "
                        + interfaces().map { "\($0.name) \($0.address)" }.joined(separator: ", "))
            case .failure(let f):
                throw ClusterError("--advertise \(spec): cannot bind \(ip):\(port): \(String(cString: strerror(f.code)))")
            }
        }
    }

    /// An IPv4 literal as it is; a host name resolved (the first IPv4 address).
    static func ipv4(of host: String, for spec: String) throws -> String {
        var probe = in_addr()
        if host == "*" || inet_pton(AF_INET, host, &probe) == 1 { return host }
        var hints = addrinfo()
        hints.ai_family = AF_INET
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var found: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(host, nil, &hints, &found)
        defer { if let found { freeaddrinfo(found) } }
        guard rc == 0, let sa = found?.pointee.ai_addr else {
            throw ClusterError(
                "--advertise \(spec): cannot resolve \(host) (\(String(cString: gai_strerror(rc)))); give an IPv4 address or an interface name such as eth0"
            )
        }
        var text = [CChar](repeating: 0, count: Int(NI_MAXHOST))
        guard getnameinfo(sa, socklen_t(MemoryLayout<sockaddr_in>.size), &text, socklen_t(text.count), nil, 0, NI_NUMERICHOST) == 0 else {
            throw ClusterError("--advertise \(spec): cannot resolve \(host)")
        }
        return String(cString: text)
    }

    /// Connects to a tcp://HOST:PORT address again and again until it answers or `seconds` pass (the
    /// neighbour may still be starting): the time the successful connection took, or why none did.
    public static func reach(_ address: String, within seconds: Double) -> Result<Double, ClusterError> {
        guard address.hasPrefix("tcp://"), let colon = address.lastIndex(of: ":"),
            let port = UInt16(address[address.index(after: colon)...])
        else { return .success(0) }  // not tcp: nothing to check
        let host = String(address[address.index(address.startIndex, offsetBy: 6)..<colon])
        var target = sockaddr_in()
        target.sin_family = sa_family_t(AF_INET)
        target.sin_port = port.bigEndian
        guard inet_pton(AF_INET, host, &target.sin_addr) == 1 else {
            return .failure(ClusterError("\(address) is not an IPv4 address and port"))
        }
        let deadline = Date().addingTimeInterval(seconds)
        var lastError = "no answer"
        repeat {
            let started = Date()
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            guard fd >= 0 else { return .failure(ClusterError("socket(): \(String(cString: strerror(errno)))")) }
            var tv = timeval(tv_sec: 1, tv_usec: 0)
            setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
            let rc = withUnsafePointer(to: &target) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            let code = errno
            close(fd)
            if rc == 0 { return .success(Date().timeIntervalSince(started)) }
            lastError = code == EINPROGRESS || code == EAGAIN ? "timed out" : String(cString: strerror(code))
            usleep(100_000)
        } while Date() < deadline
        return .failure(ClusterError("\(address): \(lastError) (for \(Int(seconds)) s)"))
    }
}

/// A tcp port held by a bound socket that never listens: no ring neighbour can connect to it (a
/// listening holder would take their first messages and lose them on close) and no other socket can
/// listen on it, until `close`, which is immediate (a ZeroMQ socket's close is not).
public final class PortHold {
    public let port: UInt16
    private var fd: Int32

    /// The errno of a bind that failed.
    struct Failure: Error { let code: Int32 }

    private init(fd: Int32, port: UInt16) { (self.fd, self.port) = (fd, port) }
    deinit { close() }

    public func close() {
        if fd >= 0 { Glibc.close(fd) }
        fd = -1
    }

    /// Binds `ip` ("*": every address) at `port`; port 0 asks the kernel for a free one, without
    /// SO_REUSEADDR, so two workers started at once are never given the same. A fixed port takes
    /// SO_REUSEADDR (a ring that just closed there leaves connections in TIME_WAIT) and still fails
    /// when something listens on it.
    static func bind(ip: String, port: UInt16) -> Result<PortHold, Failure> {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return .failure(Failure(code: errno)) }
        var one: Int32 = 1
        if port != 0 { setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size)) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        if ip == "*" {
            address.sin_addr.s_addr = INADDR_ANY
        } else if inet_pton(AF_INET, ip, &address.sin_addr) != 1 {
            Glibc.close(fd)
            return .failure(Failure(code: EADDRNOTAVAIL))
        }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
        }
        guard bound else {
            let code = errno
            Glibc.close(fd)
            return .failure(Failure(code: code))
        }
        return .success(PortHold(fd: fd, port: UInt16(bigEndian: address.sin_port)))
    }
}
