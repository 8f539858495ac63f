import Foundation
import TetherNN
import TetherONNX

/// The values a fresh run starts from instead of drawing them (fine-tuning): every parameter, and
/// the buffers a source holds (batch norm's running statistics), by Tether's names. A run started
/// from them skips data-dependent initialization: the weights are the ones given.
///
/// Sources (`TrainingConfig.startFrom`): an ONNX graph's initializers (`--model FILE.onnx`, the
/// default for one), or a safetensors file of tensors under Tether's names (a checkpoint of an
/// earlier run: its optimizer state and step are not taken). In a cluster the coordinator reads the
/// file and sends the values in every fresh Assign (`bytes`), so workers need no copy of it.
public struct StartingWeights {
    public let values: [String: [Float]]
    /// Where they came from, as errors name it.
    public let source: String

    public init(values: [String: [Float]], source: String) { (self.values, self.source) = (values, source) }

    /// Reads FILE.onnx's initializers (as the importer names them) or FILE.safetensors' F32 tensors.
    public static func read(_ path: String) throws -> StartingWeights {
        if path.hasSuffix(".onnx") { return StartingWeights(values: try ONNXImport.read(path).values, source: path) }
        guard path.hasSuffix(".safetensors") else {
            throw ConfigError(message: "--init \(path): starting weights come from FILE.onnx or FILE.safetensors (or --init fresh)")
        }
        return try StartingWeights(try Safetensors.read(URL(fileURLWithPath: path)), source: path)
    }

    /// From the wire (the coordinator's Assign): a safetensors file, as hostile as any other.
    public init(bytes: Data, source: String) throws { try self.init(try Safetensors.decode(bytes, source: source), source: source) }

    init(_ file: Safetensors.File, source: String) throws {
        var values: [String: [Float]] = [:]
        // a checkpoint's optimizer state and compression state are not starting weights
        for (name, t) in file.tensors where !name.hasPrefix("optimizer.") && !name.hasPrefix("compression.") {
            do { values[name] = try t.floats() } catch { throw ConfigError(message: "\(source): tensor \(name): \(error)") }
        }
        self.init(values: values, source: source)
    }

    /// As the coordinator sends them: one flat F32 tensor per name.
    public func bytes() -> Data {
        Safetensors.encode(.init(tensors: values.mapValues { .init(floats: $0, shape: [$0.count]) }))
    }

    /// Sets `model`'s parameters (every one must be given, with its count of values) and the buffers
    /// given (one replica's, or the first of several as a cluster's checkpoint holds them). A value
    /// the model has no place for is an error too: a different network must not start silently.
    public func load(into model: any Model<Float>) throws {
        func fail(_ why: String) -> ConfigError { ConfigError(message: "starting weights from \(source): \(why)") }
        var unused = Set(values.keys)
        for e in model.arena.layout.entries {
            guard let v = values[e.name] else { throw fail("parameter \(e.name) \(e.shape) is missing") }
            guard v.count == e.count else { throw fail("\(e.name) holds \(v.count) values, the model's \(e.shape) needs \(e.count)") }
            v.withUnsafeBufferPointer { (model.arena.values + e.offset).update(from: $0.baseAddress!, count: e.count) }
            unused.remove(e.name)
        }
        for (prefix, owner) in model.bufferOwners {
            for name in owner.bufferNames {
                guard var v = values[prefix + name] else { continue }
                unused.remove(prefix + name)
                // a row per stream (a language model's carried state) is where a run stood, not a weight
                if owner.bufferRowLength(named: name) != nil { continue }
                let own = owner.buffer(named: name)!.count
                if own > 0, v.count > own, v.count % own == 0 { v = Array(v.prefix(own)) }
                guard owner.loadBuffer(named: name, v) else {
                    throw fail("buffer \(prefix + name) holds \(v.count) values, the model needs \(own)")
                }
            }
        }
        guard unused.isEmpty else {
            throw fail("\(unused.sorted().prefix(5).joined(separator: ", ")) fit no parameter or buffer of the model \(model.kind)")
        }
    }
}
