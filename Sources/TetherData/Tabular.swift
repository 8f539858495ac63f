import Foundation
import TetherTensor

/// Rows of categorical and numeric features with a binary label (wide-deep's input, or a spec's) or a
/// numeric regression target (a spec's).
/// Categorical values are kept as 64-bit hashes of their text (the model maps them to buckets);
/// numeric features are standardized with the training split's mean and deviation.
public struct TabularDataset: Sendable {
    public let categoricalNames: [String]
    public let numericNames: [String]
    /// Pairs of categorical field indices whose value combinations the wide part sees as features.
    public let crosses: [[Int]]
    /// (N, F) value hashes, (N, M) numbers, (N) labels in {0, 1}.
    public let categorical: [UInt64]
    public let numeric: [Float]
    public let labels: [Int32]
    /// (N) the target column's numbers, when the schema names one (`target`); then every label is 0.
    public let target: [Float]?
    public var count: Int { labels.count }
    public var fields: Int { categoricalNames.count }

    public init(
        categoricalNames: [String], numericNames: [String], crosses: [[Int]], categorical: [UInt64], numeric: [Float], labels: [Int32],
        target: [Float]? = nil
    ) {
        precondition(categorical.count == labels.count * categoricalNames.count && numeric.count == labels.count * numericNames.count)
        precondition(target == nil || target!.count == labels.count)
        (self.categoricalNames, self.numericNames, self.crosses) = (categoricalNames, numericNames, crosses)
        (self.categorical, self.numeric, self.labels, self.target) = (categorical, numeric, labels, target)
    }

    /// The rows at `indices`, in order: (B, F) hashes, (B, M) numbers, (B) labels.
    public func gather(_ indices: ArraySlice<Int>) -> (categorical: [UInt64], numeric: [Float], labels: [Int32]) {
        let f = fields, m = numericNames.count, b = indices.count
        var c = [UInt64](repeating: 0, count: b * f), x = [Float](repeating: 0, count: b * m), y = [Int32](repeating: 0, count: b)
        c.withUnsafeMutableBufferPointer { cp in
            x.withUnsafeMutableBufferPointer { xp in
                categorical.withUnsafeBufferPointer { sc in
                    numeric.withUnsafeBufferPointer { sx in
                        for (r, i) in indices.enumerated() {
                            (cp.baseAddress! + r * f).update(from: sc.baseAddress! + i * f, count: f)
                            (xp.baseAddress! + r * m).update(from: sx.baseAddress! + i * m, count: m)
                            y[r] = labels[i]
                        }
                    }
                }
            }
        }
        return (c, x, y)
    }

    /// The rows at `indices`, in order.
    public func rows(_ indices: [Int]) -> TabularDataset {
        let (c, x, y) = gather(indices[...])
        return TabularDataset(
            categoricalNames: categoricalNames, numericNames: numericNames, crosses: crosses, categorical: c, numeric: x, labels: y,
            target: target.map { t in indices.map { t[$0] } })
    }

    public func prefix(_ n: Int?) -> TabularDataset {
        guard let n, n < count else { return self }
        return rows(Array(0..<n))
    }

    /// Standardizes every numeric column with the mean and deviation of `reference` (the training split).
    public func standardized(like reference: TabularDataset) -> TabularDataset {
        let m = numericNames.count
        guard m > 0, reference.count > 0 else { return self }
        var mean = [Double](repeating: 0, count: m), square = mean
        for r in 0..<reference.count { for j in 0..<m { let v = Double(reference.numeric[r * m + j]); mean[j] += v; square[j] += v * v } }
        let n = Double(reference.count)
        let std = (0..<m).map { j in max((square[j] / n - (mean[j] / n) * (mean[j] / n)).squareRoot(), 1e-6) }
        var x = numeric
        for r in 0..<count { for j in 0..<m { x[r * m + j] = Float((Double(x[r * m + j]) - mean[j] / n) / std[j]) } }
        return TabularDataset(
            categoricalNames: categoricalNames, numericNames: numericNames, crosses: crosses, categorical: categorical, numeric: x,
            labels: labels, target: target)
    }

    /// FNV-1a of a value's bytes.
    public static func hash<S: Sequence>(_ bytes: S) -> UInt64 where S.Element == UInt8 {
        var h: UInt64 = 0xCBF2_9CE4_8422_2325
        for b in bytes { h = (h ^ UInt64(b)) &* 0x100_0000_01B3 }
        return h
    }
}

/// Which columns of a CSV file are what. A schema file has one directive per line (# comments):
///
///     columns age, workclass, fnlwgt, ...      the file's columns, in order (required)
///     categorical workclass, education, ...
///     numeric age, fnlwgt, ...
///     label income >50K, >50K.                  the label column and the values that mean 1
///     target price                              or: a numeric column to predict (regression, a spec's mse or l1)
///     cross education, occupation               a crossed feature for the wide part (repeatable)
///     header yes|no                             whether the first line names the columns (default no)
///     skip-prefix |                             lines starting with this are ignored
///     delimiter tab                             the field separator: comma (default; tab for a .tsv file),
///                                               tab, semicolon or pipe
///
/// Columns not named as categorical, numeric, label or target are ignored.
public struct TabularSchema: Equatable, Sendable {
    public var columns: [String] = []
    public var categorical: [String] = []
    public var numeric: [String] = []
    public var label = ""
    public var positive: Set<String> = []
    /// The regression target column (instead of a label).
    public var target: String?
    public var crosses: [[String]] = []
    public var header = false
    public var skipPrefix: String?
    /// The field separator; nil: a tab for a file named .tsv, else a comma.
    public var delimiter: Character?

    public init() {}

    /// The UCI Adult census schema (adult.data / adult.test), with the crosses of TensorFlow's wide &
    /// deep tutorial.
    public static let adult: TabularSchema = try! parse(
        """
        columns age, workclass, fnlwgt, education, education_num, marital_status, occupation, relationship, race, gender, capital_gain, capital_loss, hours_per_week, native_country, income_bracket
        categorical workclass, education, marital_status, occupation, relationship, race, gender, native_country
        numeric age, fnlwgt, education_num, capital_gain, capital_loss, hours_per_week
        label income_bracket >50K, >50K.
        cross education, occupation
        cross native_country, occupation
        skip-prefix |
        """, file: "<adult preset>")

    /// `adult` (the preset) or the path of a schema file.
    public static func load(_ spec: String) throws -> TabularSchema {
        if spec == "adult" { return adult }
        guard let data = FileManager.default.contents(atPath: spec) else { throw DataError.missingFile(spec) }
        guard let text = String(data: data, encoding: .utf8) else { throw DataError.invalid("\(spec): the schema is not UTF-8 text") }
        return try parse(text, file: spec)
    }

    public static func parse(_ text: String, file: String) throws -> TabularSchema {
        var s = TabularSchema()
        for (n, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line =
                raw.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init)?.trimmingCharacters(
                    in: .whitespaces) ?? ""
            guard !line.isEmpty else { continue }
            let parts = line.split(separator: " ", maxSplits: 1).map(String.init)
            let key = parts[0], rest = parts.count > 1 ? parts[1] : ""
            func list(_ t: String) -> [String] {
                t.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
            }
            func fail(_ why: String) -> DataError { .invalid("\(file):\(n + 1): \(why)") }
            switch key {
            case "columns": s.columns = list(rest)
            case "categorical": s.categorical += list(rest)
            case "numeric": s.numeric += list(rest)
            case "label":
                let p = rest.split(separator: " ", maxSplits: 1).map(String.init)
                guard p.count == 2 else { throw fail("label needs a column and the values that mean 1: label income >50K") }
                s.label = p[0]
                s.positive = Set(list(p[1]))
            case "target":
                guard !rest.isEmpty, !rest.contains(",") else { throw fail("target needs one numeric column: target price") }
                s.target = rest
            case "cross":
                let c = list(rest)
                guard c.count == 2 else { throw fail("cross needs two categorical columns, got \(c.count)") }
                s.crosses.append(c)
            case "header":
                guard rest == "yes" || rest == "no" else { throw fail("header must be yes or no") }
                s.header = rest == "yes"
            case "skip-prefix": s.skipPrefix = rest.isEmpty ? nil : rest
            case "delimiter":
                let named: [String: Character] = ["comma": ",", "tab": "\t", "semicolon": ";", "pipe": "|"]
                guard let d = named[rest] else { throw fail("delimiter must be comma, tab, semicolon or pipe (got \"\(rest)\")") }
                s.delimiter = d
            default:
                throw fail(
                    "unknown directive \"\(key)\" (known: columns, categorical, numeric, label, target, cross, header, skip-prefix, delimiter)"
                )
            }
        }
        try s.check(file: file)
        return s
    }

    /// Every named column must be one of `columns`; categorical, numeric and label must not overlap.
    func check(file: String) throws {
        func fail(_ why: String) -> DataError { .invalid("\(file): \(why)") }
        guard !columns.isEmpty else { throw fail("the schema names no columns (a \"columns\" line)") }
        guard label.isEmpty != (target == nil) else {
            throw fail(
                "the schema names \(label.isEmpty ? "no" : "both a") label column (a \"label\" line)\(label.isEmpty ? " or" : " and a") target (a \"target\" line)"
            )
        }
        let known = Set(columns)
        if known.count < columns.count, let twice = columns.first(where: { c in columns.filter { $0 == c }.count > 1 }) {
            throw fail("column \"\(twice)\" is named twice in \"columns\"")
        }
        for (role, names) in [("categorical", categorical), ("numeric", numeric)] where Set(names).count < names.count {
            throw fail("a \(role) column is named twice")
        }
        for (role, names) in [
            ("categorical", categorical), ("numeric", numeric), ("label", label.isEmpty ? [] : [label]),
            ("target", target.map { [$0] } ?? []),
            ("cross", crosses.flatMap { $0 })
        ] {
            if let bad = names.first(where: { !known.contains($0) }) {
                throw fail("\(role) column \"\(bad)\" is not one of the columns (\(columns.joined(separator: ", ")))")
            }
        }
        if let bad = crosses.flatMap({ $0 }).first(where: { !categorical.contains($0) }) {
            throw fail("cross column \"\(bad)\" is not categorical")
        }
        if let both = Set(categorical).intersection(numeric).first ?? (categorical + numeric).first(where: { $0 == label || $0 == target })
        {
            throw fail("column \"\(both)\" has two roles")
        }
        guard !categorical.isEmpty || !numeric.isEmpty else { throw fail("the schema has no feature columns") }
    }
}

/// Reads a CSV (or TSV) file under a schema. A row with the wrong number of fields or a number that
/// does not parse is an error naming the file, line and column.
public enum CSVReader {
    public static func read(_ path: String, schema: TabularSchema) throws -> TabularDataset {
        guard let data = FileManager.default.contents(atPath: path) else { throw DataError.missingFile(path) }
        guard let text = String(data: data, encoding: .utf8) else { throw DataError.invalid("\(path): not UTF-8 text") }
        return try parse(text, path: path, schema: schema)
    }

    /// The rows of a CSV file's text; `path` names it in errors.
    public static func parse(_ text: String, path: String, schema: TabularSchema) throws -> TabularDataset {
        let index = Dictionary(uniqueKeysWithValues: schema.columns.enumerated().map { ($1, $0) })
        let cat = schema.categorical.map { index[$0]! }, num = schema.numeric.map { index[$0]! }
        let label = index[schema.label], target = schema.target.map { index[$0]! }
        var categorical: [UInt64] = [], numeric: [Float] = [], labels: [Int32] = [], targets: [Float] = []
        var first = schema.header
        let separator = schema.delimiter ?? (path.hasSuffix(".tsv") ? "\t" : ",")
        for (n, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = raw.hasSuffix("\r") ? raw.dropLast() : raw
            if line.allSatisfy(\.isWhitespace) { continue }
            if let p = schema.skipPrefix, line.hasPrefix(p) { continue }
            if first { first = false; continue }
            let cells = line.split(separator: separator, omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
            guard cells.count == schema.columns.count else {
                throw DataError.invalid("\(path):\(n + 1): \(cells.count) fields, the schema has \(schema.columns.count) columns")
            }
            for c in cat { categorical.append(TabularDataset.hash(cells[c].utf8)) }
            for c in num {
                guard let v = Float(cells[c]), v.isFinite else {
                    throw DataError.invalid("\(path):\(n + 1): column \(c + 1) (\(schema.columns[c])): \"\(cells[c])\" is not a number")
                }
                numeric.append(v)
            }
            labels.append(label.map { schema.positive.contains(cells[$0]) ? 1 : 0 } ?? 0)
            if let c = target {
                guard let v = Float(cells[c]), v.isFinite else {
                    throw DataError.invalid(
                        "\(path):\(n + 1): column \(c + 1) (\(schema.columns[c]), the target): \"\(cells[c])\" is not a number")
                }
                targets.append(v)
            }
        }
        guard !labels.isEmpty else { throw DataError.invalid("\(path): no data rows") }
        let crosses = schema.crosses.map { pair in pair.map { schema.categorical.firstIndex(of: $0)! } }
        return TabularDataset(
            categoricalNames: schema.categorical, numericNames: schema.numeric, crosses: crosses,
            categorical: categorical, numeric: numeric, labels: labels, target: target == nil ? nil : targets)
    }
}

extension TabularDataset: LabelledSamples {
    /// F hashes, then M numbers.
    public var sampleShape: [Int] { [fields + numericNames.count] }
    public var tableColumns: (categorical: Int, numeric: Int)? { (fields, numericNames.count) }
    /// A label is 0 or 1 (none with a target).
    public var classes: Int { target == nil ? 2 : 0 }
    public var targetWidth: Int { 1 }

    /// (B, F + M): each categorical value's hash cut to 24 bits (a whole number Float holds exactly; a spec's
    /// embedding hashes it into its buckets), then the numbers.
    public func batch<T: Scalar>(_ indices: ArraySlice<Int>, as: T.Type) -> (inputs: Tensor<T>, labels: [Int32]) {
        let (c, x, y) = gather(indices)
        let (f, m) = (fields, numericNames.count)
        let inputs = Tensor<T>.uninitialized([indices.count, f + m]) { out in
            for r in 0..<indices.count {
                for j in 0..<f { out[r * (f + m) + j] = T(Double(c[r * f + j] & 0xFF_FFFF)) }
                for j in 0..<m { out[r * (f + m) + f + j] = T(Double(x[r * m + j])) }
            }
        }
        return (inputs, y)
    }

    /// (B, 1): the target column's values (the labels as numbers without one).
    public func targets<T: Scalar>(_ indices: ArraySlice<Int>, as: T.Type) -> Tensor<T> {
        Tensor(shape: [indices.count, 1], scalars: indices.map { T(Double(target?[$0] ?? Float(labels[$0]))) })
    }
}
