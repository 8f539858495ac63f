import Foundation
import TetherData

/// The `--data` argument, by model family:
/// - images: `fashion-mnist` (Debian's dataset-fashion-mnist) or `idx:DIR` (the same four IDX files);
/// - text: `text:PATH`, a UTF-8 file or a folder of them;
/// - tables: `synthetic-clicks[:ROWS]` or `csv:PATH` with `--schema adult|FILE`.
public enum DataSource {
    public static let help =
        "fashion-mnist, idx:DIR, text:PATH (lm-tied), synthetic-clicks[:ROWS] (wide-deep), csv:PATH with --schema (wide-deep, or a model spec with a table input), npz:FILE or npy:DIR (arrays x and y, a model spec)"

    public static func directory(for spec: String) throws -> String {
        if spec == "fashion-mnist" { return FashionMNIST.defaultDirectory }
        if spec.hasPrefix("idx:") && spec.count > 4 { return String(spec.dropFirst(4)) }
        throw unknownOr("is not image data: this model reads fashion-mnist or idx:DIR", spec)
    }

    public static func images(_ spec: String, split: FashionMNIST.Split, limit: Int? = nil) throws -> ImageDataset {
        try FashionMNIST.load(directory: directory(for: spec), split: split, limit: limit)
    }

    public static func text(_ spec: String) throws -> TextCorpus {
        guard spec.hasPrefix("text:"), spec.count > 5 else {
            throw unknownOr("is not text: lm-tied reads text:PATH (a UTF-8 file or folder), e.g. text:\(TextCorpusDefaults.fortunes)", spec)
        }
        let path = String(spec.dropFirst(5))
        do { return try TextCorpus(path: path) } catch DataError.missingFile(let f) where f == TextCorpusDefaults.fortunes {
            throw DataError.invalid("\(f): no such folder (install Debian's fortunes package: apt-get install fortunes)")
        }
    }

    /// Train and held-out rows: synthetic-clicks draws both (ROWS training rows, default 200,000, and a
    /// quarter as many held out); csv: holds out every row whose index is 9 mod 10. Numbers are
    /// standardized with the training rows' statistics.
    public static func tabular(
        _ spec: String, schema: TabularSchema?, seed: UInt64, testFraction: Double? = nil
    ) throws -> (train: TabularDataset, test: TabularDataset) {
        let train: TabularDataset, test: TabularDataset
        if spec == "synthetic-clicks" || spec.hasPrefix("synthetic-clicks:") {
            var rows = 200_000
            if spec.hasPrefix("synthetic-clicks:") {
                guard let n = Int(spec.dropFirst("synthetic-clicks:".count)), n > 0 else {
                    throw DataError.unknownSource("--data \"\(spec)\": the row count after synthetic-clicks: must be a positive integer")
                }
                rows = n
            }
            train = SyntheticClicks.generate(rows: rows, seed: seed, heldOut: false)
            test = SyntheticClicks.generate(rows: max(1, rows / 4), seed: seed, heldOut: true)
        } else if spec.hasPrefix("csv:"), spec.count > 4 {
            guard let schema else {
                throw DataError.unknownSource("--data \(spec) needs --schema adult or --schema FILE (the columns' roles)")
            }
            let all = try CSVReader.read(String(spec.dropFirst(4)), schema: schema)
            guard all.count >= 2 else {
                throw DataError.invalid("\(spec.dropFirst(4)): \(all.count) row; training and held-out splits need at least 2")
            }
            let held = heldOutRows(count: all.count, fraction: testFraction), heldSet = Set(held)
            train = all.rows((0..<all.count).filter { !heldSet.contains($0) })
            test = all.rows(held)
        } else {
            throw unknownOr("is not tabular: wide-deep reads synthetic-clicks[:ROWS] or csv:PATH with --schema", spec)
        }
        // A split with one class trains to nothing and scores an AUC of nan: usually a label line whose
        // values match no row (or every row).
        for (name, split) in [("training", train), ("held-out", test)] where split.target == nil && Set(split.labels).count < 2 {
            throw DataError.invalid(
                "--data \(spec): every \(name) row has label \(split.labels.first ?? 0); a click model needs both classes "
                    + "(check the positive values of the schema's label line)")
        }
        return (train.standardized(like: train), test.standardized(like: train))
    }

    /// The schema of `csv:` data: the content a run carries, else the file (or `adult`).
    static func schema(_ config: TrainingConfig) throws -> TabularSchema? {
        if let text = config.schemaText { return try TabularSchema.parse(text, file: config.schema ?? "the run's schema") }
        return try config.schema.map(TabularSchema.load)
    }

    /// The files and folders a `--data` spec (and a schema file) makes this process read.
    public static func localPaths(data spec: String, schema: String?, testData: String? = nil) -> [String] {
        var paths: [String] = testData.map { localPaths(data: $0, schema: nil) } ?? []
        if spec == "fashion-mnist" { paths.append(FashionMNIST.defaultDirectory) }
        for prefix in ["idx:", "text:", "csv:", "npz:", "npy:"] where spec.hasPrefix(prefix) {
            paths.append(String(spec.dropFirst(prefix.count)))
        }
        if let schema, schema != "adult" { paths.append(schema) }
        return paths
    }

    /// "--data X <why>" for data of another family, "unknown --data X" for anything else.
    static func unknownOr(_ why: String, _ spec: String) -> DataError {
        let known = spec == "fashion-mnist" || ["idx:", "text:", "csv:", "synthetic-clicks"].contains { spec.hasPrefix($0) }
        return .unknownSource(known ? "--data \"\(spec)\" \(why)" : "unknown --data \"\(spec)\": use \(help)")
    }
}

extension TrainingConfig {
    /// The largest schema file a run carries.
    static let schemaBytes = 1 << 20

    /// The run's files made independent of where the command runs: data paths absolute, and a schema
    /// file's content read into `schemaText` (kept when already there: a resumed run's).
    public func withFilesResolved() throws -> TrainingConfig {
        var c = self
        let here = URL(fileURLWithPath: FileManager.default.currentDirectoryPath)
        func absolute(_ path: String) -> String { URL(fileURLWithPath: path, relativeTo: here).standardizedFileURL.path }
        for prefix in ["idx:", "text:", "csv:", "npz:", "npy:"] {
            if c.data.hasPrefix(prefix), c.data.count > prefix.count { c.data = prefix + absolute(String(c.data.dropFirst(prefix.count))) }
            if let t = c.testData, t.hasPrefix(prefix), t.count > prefix.count {
                c.testData = prefix + absolute(String(t.dropFirst(prefix.count)))
            }
        }
        if let schema = c.schema, schema != "adult" {
            c.schema = absolute(schema)
            if c.schemaText == nil {
                guard let data = FileManager.default.contents(atPath: c.schema!) else { throw DataError.missingFile(c.schema!) }
                guard data.count <= Self.schemaBytes, let text = String(data: data, encoding: .utf8) else {
                    throw DataError.invalid("\(c.schema!): a schema is UTF-8 text of at most \(Self.schemaBytes) bytes")
                }
                c.schemaText = text
            }
        }
        return c
    }
}
