import Foundation

/// Progress on the terminal: a redrawn bar when stdout is a terminal, plain log lines otherwise. The
/// bar fits the terminal's width (narrower, then without its less useful parts); on a terminal too
/// narrow for any of it, periodic log lines are printed instead.
public final class ProgressDisplay {
    public let interactive: Bool
    /// Print nothing (--quiet: errors and warnings go to stderr elsewhere).
    public let quiet: Bool
    /// Standard output, or standard error when standard output carries a result (--json).
    private let output: FileHandle
    private var lastDraw = Date.distantPast
    private var barShown = false
    /// The last draw found no bar that fits: log lines stand in for it.
    private var tooNarrow = false

    /// `interactive` defaults to whether the output is a terminal.
    public init(interactive: Bool? = nil, toStandardError: Bool = false, quiet: Bool = false) {
        output = toStandardError ? .standardError : .standardOutput
        self.interactive = interactive ?? (isatty(toStandardError ? STDERR_FILENO : STDOUT_FILENO) == 1)
        self.quiet = quiet
    }

    /// A progress update for step `step` of `steps` in epoch `epoch`; drawn at most 10 times a second.
    /// `unit` is what the rate counts (a workload's: samples, or tokens for a language model).
    public func update(epoch: Int, epochs: Int, step: Int, steps: Int, loss: Double, rate: Double, unit: String, eta: Double) {
        guard interactive, !quiet else { return }
        let now = Date()
        guard now.timeIntervalSince(lastDraw) > 0.1 || step == steps else { return }
        lastDraw = now
        guard
            let text = Self.bar(
                epoch: epoch, epochs: epochs, step: step, steps: steps, loss: loss, rate: rate, unit: unit, eta: eta,
                width: Self.terminalColumns())
        else {
            if barShown { output.write(Data("\r\u{1B}[2K".utf8)); barShown = false }
            tooNarrow = true
            return
        }
        tooNarrow = false
        output.write(Data(("\r\u{1B}[2K" + text).utf8))
        barShown = true
    }

    /// The bar's text in fewer than `width` columns (the last column stays free, so no terminal wraps
    /// it): the whole, then a shorter bar, then without the bar, the rate and the ETA; nil when not even
    /// the epoch, step and loss fit.
    public static func bar(
        epoch: Int, epochs: Int, step: Int, steps: Int, loss: Double, rate: Double, unit: String, eta: Double, width: Int
    ) -> String? {
        let head = "epoch \(epoch + 1)/\(epochs)", count = "\(step)/\(steps)", lossText = "loss \(fixed(loss, 4))"
        let rateText = "\(grouped(rate)) \(unit)/s", etaText = "ETA \(duration(eta))"
        func drawn(_ cells: Int) -> String {
            let filled = steps > 0 ? cells * min(step, steps) / steps : cells
            return String(repeating: "█", count: filled) + String(repeating: "·", count: cells - filled)
        }
        var candidates = [24, 16, 10].map { "\(head) \(drawn($0)) \(count)  \(lossText)  \(rateText)  \(etaText)" }
        candidates += [
            "\(head) \(count)  \(lossText)  \(rateText)  \(etaText)", "\(head) \(count)  \(lossText)  \(etaText)",
            "\(head) \(count)  \(lossText)"
        ]
        return candidates.first { $0.count < width }
    }

    /// The terminal's columns (TIOCGWINSZ on stdout), else $COLUMNS, else 80.
    static func terminalColumns() -> Int {
        var size = winsize()
        if ioctl(STDOUT_FILENO, UInt(TIOCGWINSZ), &size) == 0 || ioctl(STDERR_FILENO, UInt(TIOCGWINSZ), &size) == 0, size.ws_col > 0 {
            return Int(size.ws_col)
        }
        return ProcessInfo.processInfo.environment["COLUMNS"].flatMap(Int.init) ?? 80
    }

    /// What an evaluation line names: "epoch 2/10" at an epoch's end, or where a run ends within one,
    /// "step 10 (2 of epoch 3's 4 steps)". `step` is the global step count.
    public static func evaluated(step: Int, stepsPerEpoch: Int, epochs: Int) -> String {
        let epoch = (max(step, 1) - 1) / max(stepsPerEpoch, 1) + 1, inEpoch = step - (epoch - 1) * stepsPerEpoch
        return inEpoch == stepsPerEpoch
            ? "epoch \(epoch)/\(epochs)" : "step \(step) (\(inEpoch) of epoch \(epoch)'s \(stepsPerEpoch) steps)"
    }

    /// A line that stays: log output, or an epoch summary under the bar.
    public func line(_ text: String) {
        guard !quiet else { return }
        if barShown { output.write(Data("\r\u{1B}[2K".utf8)); barShown = false }
        output.write(Data((text + "\n").utf8))
    }

    /// A periodic log line, shown only when not drawing a bar.
    public func log(_ text: String) { if !interactive || tooNarrow { line(text) } }

    public static func fixed(_ x: Double, _ digits: Int) -> String { String(format: "%.\(digits)f", x) }
    public static func grouped(_ x: Double) -> String {
        let f = NumberFormatter()
        f.numberStyle = .decimal
        f.maximumFractionDigits = 0
        return f.string(from: NSNumber(value: x.isFinite ? x : 0)) ?? "\(Int(x))"
    }
    /// Bytes in decimal units, three significant digits: "812 B", "1.08 MB", "57.3 kB".
    /// "1 step", "3 steps": a count with its noun.
    public static func count(_ n: Int, _ noun: String) -> String { "\(n) \(noun)\(n == 1 ? "" : noun.hasSuffix("s") ? "es" : "s")" }

    public static func bytes(_ n: Double) -> String {
        guard n.isFinite, n >= 0 else { return "--" }
        let (value, unit) =
            n >= 1e15
            ? (n / 1e15, "PB")
            : n >= 1e12 ? (n / 1e12, "TB") : n >= 1e9 ? (n / 1e9, "GB") : n >= 1e6 ? (n / 1e6, "MB") : n >= 1e3 ? (n / 1e3, "kB") : (n, "B")
        return unit == "B" ? "\(Int(n.rounded())) B" : fixed(value, value >= 100 ? 0 : value >= 10 ? 1 : 2) + " " + unit
    }
    public static func duration(_ s: Double) -> String {
        guard s.isFinite, s >= 0 else { return "--" }
        let t = Int(s.rounded())
        return t >= 3600
            ? "\(t / 3600)h\(String(format: "%02d", t / 60 % 60))m" : t >= 60 ? "\(t / 60)m\(String(format: "%02d", t % 60))s" : "\(t)s"
    }
}
