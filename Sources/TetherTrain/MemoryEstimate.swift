import Foundation

/// What a job's configuration will make a process allocate, estimated from the configuration alone,
/// before anything is allocated: a coordinator's Assign is checked with it, so that well-formed numbers
/// that are each in range cannot together ask a worker for more memory than its host has.
///
/// The estimate is the sum of a few named terms (parameters with their gradients and optimizer state,
/// a step's activations), each a product of settings in overflow-checked arithmetic (saturating at
/// `Int.max`). It errs low where the data decides (wide-deep's number of fields is taken as 1): it
/// exists to refuse what cannot fit, not to predict peak RSS.
public struct MemoryEstimate: Sendable, Equatable {
    public struct Term: Sendable, Equatable {
        /// What the memory holds ("vocabulary embeddings"), and the product that sizes it.
        public var what: String, product: String
        public var bytes: Int
    }
    public var terms: [Term] = []
    public var totalBytes: Int { terms.reduce(0) { $0.addingReportingOverflow($1.bytes).overflow ? Int.max : $0 + $1.bytes } }

    /// Values kept per parameter: itself, its gradient, and the optimizer's state.
    static func copiesPerParameter(_ config: TrainingConfig) -> Int {
        switch config.optimizer.kind {
        case .adam, .adamw: 4
        case .adagrad: 3
        case .sgd: config.optimizer.momentum > 0 ? 3 : 2
        }
    }

    /// `factors` multiplied, 4 bytes each value: the product, or `Int.max` when it overflows.
    static func bytes(_ factors: [Int]) -> Int {
        var p = 4
        for f in factors {
            let (q, overflow) = p.multipliedReportingOverflow(by: max(f, 0))
            if overflow { return Int.max }
            p = q
        }
        return p
    }

    /// "vocabulary 1099511627776 x size 1048576 x 4 bytes"
    static func product(_ named: [(String, Int)]) -> String {
        (named.map { "\($0) \($1)" } + ["4 bytes"]).joined(separator: " x ")
    }

    mutating func add(_ what: String, _ named: [(String, Int)]) {
        terms.append(Term(what: what, product: Self.product(named), bytes: Self.bytes(named.map(\.1))))
    }

    /// The estimate for `config`'s model family and shape.
    public init(_ config: TrainingConfig) {
        let copies = Self.copiesPerParameter(config), b = config.batch
        switch config.model {
        case "lm-tied":
            let l = config.language
            add("vocabulary embeddings", [("vocabulary", l.vocabulary), ("size", l.size), ("copies", copies * (l.untied ? 2 : 1))])
            add("LSTM weights", [("layers", l.layers), ("4 gates x 2 inputs x size", 8 * l.size), ("size", l.size), ("copies", copies)])
            add("output logits", [("batch", b), ("bptt", l.bptt), ("vocabulary", l.vocabulary), ("2 (values and gradients)", 2)])
            add("LSTM activations", [("batch", b), ("bptt", l.bptt), ("layers", l.layers), ("10 x size", 10 * l.size)])
        case "wide-deep":
            let w = config.wideDeep
            add("wide weights", [("wide buckets", w.wideBuckets), ("copies", copies)])
            add("deep embeddings", [("buckets", w.buckets), ("embedding", w.embedding), ("copies", copies)])
            var inputs = w.embedding
            for (i, width) in w.hidden.enumerated() {
                add("hidden layer \(i + 1)", [("inputs", inputs), ("width", width), ("copies", copies)])
                add("hidden layer \(i + 1) activations", [("batch", b), ("width", width), ("3", 3)])
                inputs = width
            }
        case "spec":
            let parameters = (try? config.spec?.parameterCount()) ?? nil ?? 0
            let activations = (try? config.spec?.activationCount()) ?? nil ?? 0
            add("parameters", [("parameters", parameters), ("copies", copies)])
            add(
                "activations",
                [
                    ("batch", b), ("values a sample (every layer's output, an lstm's gates)", activations),
                    ("3 (values, gradients, scratch)", 3)
                ])
        default:
            // the image families' shapes are fixed: 28x28 inputs, at most ~1.7M parameters; a sample's
            // activations and im2col buffers stay under 256k values (cnn-wn's first conv's columns)
            add("parameters", [("1.7M parameters", 1_700_000), ("copies", copies)])
            add("activations", [("batch", b), ("256k values a sample", 256 << 10)])
        }
    }

    /// Throws unless the estimate fits in `limit` bytes, naming the largest term with its product:
    /// "this job needs about 17.6 TB for its vocabulary embeddings (vocabulary ... x 4 bytes); this
    /// worker may use 12.0 GB (--max-memory)".
    public func check(limit: Int, who: String) throws {
        let total = totalBytes
        guard total > limit, let largest = terms.max(by: { $0.bytes < $1.bytes }) else { return }
        let amount = total == Int.max ? "more than 9.2 EB" : "about \(ProgressDisplay.bytes(Double(total)))"
        throw ConfigError(
            message: "this job needs \(amount) (\(largest.what): \(largest.product)); \(who) may use "
                + "\(ProgressDisplay.bytes(Double(limit))) (--max-memory)")
    }
}

/// How much memory this process may use: `--max-memory` when given, else three quarters of what the
/// host (or the cgroup this process runs in, when it is smaller) has. Set once, as a command starts;
/// `TrainingConfig.validate()` checks every configuration against it.
public enum MemoryLimit {
    nonisolated(unsafe) public private(set) static var bytes = hostDefault
    /// Who is limited, in an error: "this worker", "this coordinator".
    nonisolated(unsafe) public private(set) static var holder = "this process"

    public static func set(_ bytes: Int?, holder: String) {
        if let bytes { Self.bytes = bytes }
        Self.holder = holder
    }

    /// Parses "12G", "512M", "1.5T", "300000000" (bytes); K, M, G, T in powers of 1024.
    public static func parse(_ text: String) throws -> Int {
        let t = text.trimmingCharacters(in: .whitespaces).uppercased().replacingOccurrences(of: "B", with: "")
        let units: [Character: Double] = ["K": 0x1p10, "M": 0x1p20, "G": 0x1p30, "T": 0x1p40]
        let (digits, unit) = t.last.flatMap { units[$0] }.map { (String(t.dropLast()), $0) } ?? (t, 1)
        guard let value = Double(digits), value.isFinite, value > 0, value * unit < 0x1p62 else {
            throw ConfigError(message: "--max-memory takes a size such as 12G, 512M or 1.5T (got \(text))")
        }
        return Int(value * unit)
    }

    public static var hostDefault: Int {
        var limit = physical
        if let text = try? String(contentsOfFile: "/sys/fs/cgroup/memory.max", encoding: .utf8),
            let cgroup = Int(text.trimmingCharacters(in: .whitespacesAndNewlines))
        {
            limit = min(limit, cgroup)
        }
        return limit / 4 * 3
    }

    static var physical: Int {
        let pages = sysconf(Int32(_SC_PHYS_PAGES)), size = sysconf(Int32(_SC_PAGESIZE))
        guard pages > 0, size > 0, !pages.multipliedReportingOverflow(by: size).overflow else { return 1 << 34 }
        return pages * size
    }
}
