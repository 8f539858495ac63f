import ArgumentParser
import Foundation
import Logging

/// The process's log (swift-log): every component logs to its own `Logger` (worker, ring, coordinator,
/// data), and this handler writes them to standard error at the level asked, as text or JSON lines.
/// The coordinator's and `train`'s progress view stays on standard output: it is the program's
/// output, not its log.
struct LogOptions: ParsableArguments {
    enum Format: String, ExpressibleByArgument, CaseIterable { case text, json }

    @Option(help: "Log level: trace, debug, info, notice, warning, error or critical (default info; --quiet: error).")
    var logLevel: Logger.Level?
    @Option(help: "Log lines as text (component, rank, message) or json (one object a line: time, level, component, rank, message).")
    var logFormat: Format = .text

    /// The arguments that give a child process (a simulated worker) the same log settings.
    var passedOn: [String] { (logLevel.map { ["--log-level", $0.rawValue] } ?? []) + ["--log-format", logFormat.rawValue] }

    /// Sets the process's log handler; once, before any component makes its logger.
    func bootstrap(quiet: Bool = false) {
        let (level, format) = (logLevel ?? (quiet ? .error : .info), logFormat)
        LoggingSystem.bootstrap { label in LineLogHandler(label: label, level: level, format: format) }
    }
}

extension Logger.Level: @retroactive ExpressibleByArgument {}

/// One line per message on standard error. Text: "LABEL[ rank N]: [LEVEL: ]message" (the level named
/// from warning up); JSON: {"time", "level", "component", "message", and the metadata}.
struct LineLogHandler: LogHandler {
    let label: String
    var logLevel: Logger.Level
    let format: LogOptions.Format
    var metadata: Logger.Metadata = [:]

    init(label: String, level: Logger.Level, format: LogOptions.Format) { (self.label, logLevel, self.format) = (label, level, format) }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    private static let lock = NSLock()

    func log(event: LogEvent) {
        let (level, message) = (event.level, event.message)
        let all = metadata.merging(event.metadata ?? [:]) { $1 }
        let text: String
        switch format {
        case .text:
            let who = label + (all["rank"].map { " rank \($0)" } ?? "")
            text = "\(who): " + (level >= .warning ? "\(level): " : "") + message.description
        case .json:
            var object: [String: Any] = [
                "time": ISO8601DateFormatter.string(
                    from: Date(), timeZone: .gmt, formatOptions: [.withInternetDateTime, .withFractionalSeconds]),
                "level": level.rawValue, "component": label, "message": message.description
            ]
            for (k, v) in all where object[k] == nil { object[k] = "\(v)" }
            text =
                (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])).map {
                    String(decoding: $0, as: UTF8.self)
                } ?? message.description
        }
        Self.lock.withLock { FileHandle.standardError.write(Data((text + "\n").utf8)) }
    }
}
