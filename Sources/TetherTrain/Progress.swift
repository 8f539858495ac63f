import Foundation

/// Progress on the terminal: a redrawn bar when stdout is a terminal, plain log lines otherwise.
public final class ProgressDisplay {
    public let interactive: Bool
    private var lastDraw = Date.distantPast
    private var barShown = false

    public init(interactive: Bool = isatty(STDOUT_FILENO) == 1) { self.interactive = interactive }

    /// A progress update for step `step` of `steps` in epoch `epoch`; drawn at most 10 times a second.
    /// `unit` is what the rate counts (a workload's: samples, or tokens for a language model).
    public func update(epoch: Int, epochs: Int, step: Int, steps: Int, loss: Double, rate: Double, unit: String, eta: Double) {
        guard interactive else { return }
        let now = Date()
        guard now.timeIntervalSince(lastDraw) > 0.1 || step == steps else { return }
        lastDraw = now
        let width = 24, filled = steps > 0 ? width * step / steps : width
        let bar = String(repeating: "█", count: filled) + String(repeating: "·", count: width - filled)
        let text = "epoch \(epoch + 1)/\(epochs) \(bar) \(step)/\(steps)  loss \(Self.fixed(loss, 4))  \(Self.grouped(rate)) \(unit)/s  ETA \(Self.duration(eta))"
        FileHandle.standardOutput.write(Data(("\r\u{1B}[2K" + text).utf8))
        barShown = true
    }

    /// A line that stays: log output, or an epoch summary under the bar.
    public func line(_ text: String) {
        if barShown { FileHandle.standardOutput.write(Data("\r\u{1B}[2K".utf8)); barShown = false }
        print(text)
        fflush(stdout)
    }

    /// A periodic log line, shown only when not drawing a bar.
    public func log(_ text: String) { if !interactive { line(text) } }

    public static func fixed(_ x: Double, _ digits: Int) -> String { String(format: "%.\(digits)f", x) }
    public static func grouped(_ x: Double) -> String {
        let f = NumberFormatter()
        f.numberStyle = .decimal
        f.maximumFractionDigits = 0
        return f.string(from: NSNumber(value: x.isFinite ? x : 0)) ?? "\(Int(x))"
    }
    public static func duration(_ s: Double) -> String {
        guard s.isFinite, s >= 0 else { return "--" }
        let t = Int(s.rounded())
        return t >= 3600 ? "\(t / 3600)h\(String(format: "%02d", t / 60 % 60))m" : t >= 60 ? "\(t / 60)m\(String(format: "%02d", t % 60))s" : "\(t)s"
    }
}
