import ArgumentParser
import Foundation
import TetherData
import TetherNN
import TetherTensor
import TetherTrain

/// `tether predict`: a checkpoint's network over samples, in their order, to a file: .npy (N, K)
/// float32 of the probabilities or the regression's values, .csv (a header, then per row its index,
/// class and probabilities, or its values) or .jsonl (an object per row: class and probabilities, or
/// the top k, or the values). A language model's samples are the held-out lines, its classes the
/// vocabulary's tokens (named beside their ids): the distribution of the token after each line.
struct Predict: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run a trained checkpoint's network over samples and write its predictions.")

    @Option(help: "The checkpoint file (a run directory's checkpoint.safetensors).") var checkpoint: String
    @Option(
        help:
            "The samples: npz:FILE or npy:DIR (every row of x, in order; y may be left out), or another --data of the run's kind (its held-out split) (default: the run's held-out split)."
    )
    var data: String?
    @Option(help: "For csv: data, the schema (default: the one the checkpoint carries).") var schema: String?
    @Option(help: "Where to write: FILE.npy, FILE.csv or FILE.jsonl.") var output: String
    @Option(help: "In .jsonl, the k most probable classes per row instead of every probability.") var topK: Int?
    @Option(help: "Samples per forward pass.") var batch = 256
    @OptionGroup var threads: ResourceOptions

    enum Format: String { case npy, csv, jsonl }
    var format: Format? { Format(rawValue: URL(fileURLWithPath: output).pathExtension.lowercased()) }

    func validate() throws {
        guard format != nil else { throw ValidationError("--output \(output): give a .npy, .csv or .jsonl file") }
        if let topK, topK < 1 { throw ValidationError("--top-k must be at least 1") }
        guard (1...65_536).contains(batch) else { throw ValidationError("--batch must be in 1...65536") }
    }

    func run() throws {
        threads.apply(holder: "this process")
        ProcessMemory.keepFreedBuffers()  // a batch's activations are freed and taken again each batch
        do {
            let predicting = try Self.network(checkpoint: checkpoint, data: data, schema: schema)
            let total = predicting.predictionCount, started = Date()
            var values: [Float] = [], width = 1, lastReport = started  // (N, K), row after row
            values.reserveCapacity(total)
            predicting.predictions(inBatchesOf: batch) { predicted in
                width = predicted.count / max(1, predicted.shape[0])
                predicted.withPointer { values.append(contentsOf: UnsafeBufferPointer(start: $0, count: predicted.count)) }
                if Date().timeIntervalSince(lastReport) >= 1 {
                    lastReport = Date()
                    FileHandle.standardError.write(Data("predict: \(values.count / width) / \(total) samples\n".utf8))
                }
            }
            let seconds = Date().timeIntervalSince(started), count = values.count / width
            try write(values, width: width, objective: predicting.objective, names: predicting.classNames)
            FileHandle.standardError.write(
                Data(
                    String(
                        format: "predict: %d samples in %.2f s (%.0f samples/s, %d thread(s)); wrote %@\n", count, seconds,
                        Double(count) / max(seconds, 1e-9), Compute.threads, output
                    ).utf8))
        } catch { exitWithError(error) }
    }

    /// The checkpoint's trained network over the samples `data` names (every row of arrays, in order;
    /// another source's held-out split; nil: the run's held-out split).
    static func network(checkpoint: String, data: String?, schema: String?) throws -> any Predicting {
        let loaded = try Checkpoint.Loaded(URL(fileURLWithPath: checkpoint))
        var config = loaded.config
        if let schema { config.useSchema(schema) }
        let predicting: any Predicting
        if let data, DataSource.isArrays(data) {
            guard let spec = try loaded.fittedSpec() else {
                throw ConfigError(
                    message: "\(data): arrays go through a model spec's network; \(config.model) takes --data of its own kind")
            }
            predicting = try Workloads.prediction(config.withFilesResolved(), spec: spec, arrays: data)
        } else {
            if let data { config.data = data }
            guard let p = try Workloads.make(config.withFilesResolved(), metadata: loaded.file.metadata) as? any Predicting else {
                throw ConfigError(message: "predict: \(config.model) gives no prediction per sample")
            }
            predicting = p
        }
        try loaded.restore(into: predicting.model, optimizer: nil)
        predicting.model.context.freezeParameters()  // from here on only forward passes
        return predicting
    }

    /// Writes `values` (N, width), row after row, in the output's format; classes with `names` (a
    /// vocabulary's words) are named beside their numbers.
    func write(_ values: [Float], width: Int, objective: Objective, names: [String]?) throws {
        let classes = objective == .classes
        let rows = stride(from: 0, to: values.count, by: width).lazy.map { values[$0..<($0 + width)] }
        func best(_ row: ArraySlice<Float>) -> Int { (row.indices.max { row[$0] < row[$1] } ?? row.startIndex) - row.startIndex }
        var text = ""
        switch format! {
        case .npy:
            let bytes = values.withUnsafeBytes { Array($0) }
            try Data(NumPy.npy(NumPyArray(dtype: .float32, shape: [values.count / width, width], bytes: bytes))).write(
                to: URL(fileURLWithPath: output), options: .atomic)
            return
        case .csv:
            let columns = (0..<width).map { classes ? "p\($0)" : (objective == .binary ? "p1" : "value\($0)") }
            text = (["row"] + (classes ? ["class"] : []) + (names != nil ? ["name"] : []) + columns).joined(separator: ",") + "\n"
            for (i, row) in rows.enumerated() {
                let named = names.map { [csvField($0[best(row)])] } ?? []
                text += ([String(i)] + (classes ? [String(best(row))] : []) + named + row.map { "\($0)" }).joined(separator: ",") + "\n"
            }
        case .jsonl:
            for (i, row) in rows.enumerated() {
                var object: [String: Any] = ["row": i]
                switch objective {
                case .classes:
                    object["class"] = best(row)
                    if let names { object["name"] = names[best(row)] }
                    if let topK {
                        let order = row.indices.sorted { row[$0] > row[$1] }.prefix(topK)
                        object["top"] = order.map { i -> [String: Any] in
                            var top: [String: Any] = ["class": i - row.startIndex, "probability": Double(row[i])]
                            if let names { top["name"] = names[i - row.startIndex] }
                            return top
                        }
                    } else {
                        object["probabilities"] = row.map(Double.init)
                    }
                case .binary: (object["class"], object["probability"]) = (row.first! >= 0.5 ? 1 : 0, Double(row.first!))
                case .squaredError, .absoluteError: object["values"] = row.map(Double.init)
                }
                text += String(decoding: try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]), as: UTF8.self) + "\n"
            }
        }
        try text.write(toFile: output, atomically: true, encoding: .utf8)
    }

    /// A CSV field: quoted (its quotes doubled) when it holds a comma, a quote or a line break.
    func csvField(_ text: String) -> String {
        text.contains(where: { ",\"\n\r".contains($0) }) ? "\"" + text.replacingOccurrences(of: "\"", with: "\"\"") + "\"" : text
    }
}
