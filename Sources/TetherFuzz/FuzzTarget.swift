import Foundation
import TetherCluster
import TetherComm
import TetherMessages
import TetherData
import TetherJobFile
import TetherNN
import TetherONNX
import TetherTensor
import TetherTrain

/// The decoders that read bytes from a socket or a file, each as one fuzz target: `run` takes any bytes
/// and must return (an error is a fine answer) without a trap, a hang or an allocation sized by the
/// input beyond what it holds. bench/fuzz runs them under libFuzzer; the tests run each briefly with
/// a seeded mutation driver (`MutationDriver`).
public enum FuzzTarget: String, CaseIterable, Sendable {
    /// An envelope and whichever control body it holds, then what the receiver does with it: the
    /// worker's Assign check, the coordinator's state machine, data serving, a checkpoint's loading.
    case envelope
    /// A job configuration (JSON, as an Assign carries it) checked as a worker checks an Assign, under a
    /// 256 MB --max-memory; one it accepts then has its model and optimizer built. Run under
    /// libFuzzer's -malloc_limit_mb, an accepted configuration that allocates beyond the bound is a
    /// finding.
    case assign
    /// A collective chunk: the header frame (an envelope) and its payload, checked as a ring rank checks them.
    case chunk
    /// Served rows with their shape, decoded as images, tables and token sequences.
    case dataRows = "data-rows"
    case safetensors
    case idx
    case csvSchema = "csv-schema"
    case csvRows = "csv-rows"
    case jobFile = "job-file"
    /// An ONNX model file, parsed and bounded (tensors' bytes against their shapes).
    case onnx

    public func run(_ input: [UInt8]) {
        switch self {
        case .envelope: Self.envelope(input)
        case .assign: Self.assign(input)
        case .chunk: Self.chunk(input)
        case .dataRows: Self.dataRows(input)
        case .safetensors:
            _ = try? Checkpoint.Loaded(bytes: Data(input), source: "fuzz")
        case .idx:
            _ = try? IDX.parse(input, path: "fuzz")
        case .csvSchema:
            _ = try? TabularSchema.parse(String(decoding: input, as: UTF8.self), file: "fuzz")
        case .csvRows:
            let text = String(decoding: input, as: UTF8.self)
            _ = try? CSVReader.parse(text, path: "fuzz", schema: .adult)
            _ = try? CSVReader.parse(text, path: "fuzz", schema: Self.smallSchema)
        case .onnx:
            _ = try? ONNXModel(bytes: input, source: "fuzz")
        case .jobFile:
            _ = try? JobFile.settings(
                text: String(decoding: input, as: UTF8.self), path: "fuzz", command: "worker",
                commands: ["train", "simulate", "coordinator", "worker", "eval"])
        }
    }

    static let smallSchema = try! TabularSchema.parse(
        "columns a, b, c, y\ncategorical a, b\nnumeric c\nlabel y 1\ncross a, b\nheader yes\n", file: "fuzz")

    static func envelope(_ input: [UInt8]) {
        _ = input.withUnsafeBytes { try? ControlLimits.checkSizes($0) }
        guard let env = try? Envelope(decoding: input), let body = env.body else { return }
        switch body {
        case .assign(let a):
            _ = try? AssignCheck(dataRoots: ["/nonexistent-fuzz-root"], secure: true).validate(a)
            _ = try? AssignCheck(dataRoots: ["/nonexistent-fuzz-root"], secure: false).validate(a)
        case .dataRequest(let r):
            _ = DataServing.answer(r, train: Self.images, test: Self.images)
        case .dataRows(let r):
            dataRows(shape: r.shape, rows: r.rows)
        case .checkpoint(let c):
            _ = try? Checkpoint.Loaded(bytes: Data(c.safetensors), source: "fuzz")
            var s = trainingMachine()
            _ = s.handle(.checkpoint(rank: 0, c), now: 2)
        case .stepReport(let r):
            var s = trainingMachine()
            _ = s.handle(.step(rank: Int(env.senderRank & 1), r), now: 2)
        case .evalReport(let r):
            var s = trainingMachine()
            _ = s.handle(.evaluation(rank: Int(env.senderRank & 1), r), now: 2)
        case .ready(let r):
            var s = trainingMachine()
            _ = s.handle(.ready(rank: 0, r), now: 2)
        case .abort(let a):
            var s = trainingMachine()
            _ = s.handle(.abort(rank: Int(env.senderRank & 1), reason: a.reason), now: 2)
        case .hello(let h):
            var s = CoordinatorState(.init(workers: 2, totalSteps: 10, stepsPerEpoch: 5), now: 0)
            _ = s.handle(.hello(identity: [1], address: h.advertiseAddress), now: 1)
            _ = s.handle(.hello(identity: [2], address: h.advertiseAddress), now: 1)
        case .chunk(let h):
            _ = ExpectedChunk(operation: .allReduce, ringStep: 0, chunkIndex: 0, dtype: .f32, offset: 0, count: 4, totalCount: 8)
                .mismatch(h, sequence: 0, layoutFingerprint: 0, payloadBytes: 16)
        case .reform(let r):
            // a training worker: a join's Reform, then one after a failure
            var s = WorkerState()
            _ = s.handle(.launched)
            _ = s.handle(.assigned(rank: 0, ringEpoch: 0, reformInPlace: true))
            _ = s.handle(
                .replicaReady(
                    .init(rank: 0, stepsPerEpoch: 5, totalSteps: 10, hashEvery: 1, checkpointEvery: 0), globalStep: 0,
                    redoEndOfStep: false, keepsState: true))
            _ = s.handle(.coordinator(.start))
            _ = s.handle(.coordinator(.reform(r)))
            _ = s.handle(.ringFailed("fuzz"))
            _ = s.handle(.reformReceived(r))
        case .start, .heartbeat, .finish, .stop, .unassigned:
            break
        }
    }

    /// The memory a configuration may ask of the fuzzing process.
    static let assignMemory = 256 << 20

    static func assign(_ input: [UInt8]) {
        MemoryLimit.set(assignMemory, holder: "the fuzz target")
        let assign = Assign(
            rank: 0, worldSize: 1, ring: ["tcp://127.0.0.1:5"], configJSON: input, hashEvery: 1, checkpointEvery: 0, bucketBytes: 1 << 20)
        guard let config = try? AssignCheck(dataRoots: ["/nonexistent-fuzz-root"], secure: false).validate(assign) else { return }
        var rng = RNG(seed: 1)
        let arena: ParameterArena<Float>, ftrl: Set<String>
        switch config.model {
        case "lm-tied":
            let l = config.language
            let lm = LanguageModel<Float>(
                LanguageModelShape(
                    vocabulary: l.vocabulary, size: l.size, layers: l.layers, dropout: l.dropout, tied: !l.untied, weightNorm: l.weightNorm),
                trainStreams: config.batch, rng: &rng)
            (arena, ftrl) = (lm.arena, lm.ftrlParameters)
        case "wide-deep":
            let w = config.wideDeep
            let model = WideDeep<Float>(
                WideDeepShape(
                    fields: 1, numeric: 1, crosses: [], buckets: w.buckets, wideBuckets: w.wideBuckets, embedding: w.embedding,
                    hidden: w.hidden, parts: w.parts), rng: &rng)
            (arena, ftrl) = (model.arena, model.ftrlParameters)
        default:
            return  // the image families' shapes are fixed
        }
        _ = try? Optimizer<Float>(config.optimizer, layout: arena.layout, ftrlParameters: ftrl)
    }

    /// A coordinator of two ranks in training at step 0 of 10.
    static func trainingMachine() -> CoordinatorState {
        var s = CoordinatorState(.init(workers: 2, totalSteps: 10, stepsPerEpoch: 5), now: 0)
        _ = s.handle(.hello(identity: [1], address: "tcp://a:1"), now: 0)
        _ = s.handle(.hello(identity: [2], address: "tcp://b:1"), now: 0)
        for r in 0..<2 { _ = s.handle(.ready(rank: r, .init(parameterHash: 1, layoutFingerprint: 1)), now: 1) }
        return s
    }

    static let images = ImageDataset(pixels: [UInt8](repeating: 7, count: 3 * 4), labels: [0, 1, 2], height: 2, width: 2, classes: 10)

    /// Input: a 2-byte little-endian header frame length, the header frame, then the payload frame.
    static func chunk(_ input: [UInt8]) {
        guard input.count >= 2 else { return }
        let n = min(Int(input[0]) | Int(input[1]) << 8, input.count - 2)
        guard let env = try? Envelope(decoding: Array(input[2..<2 + n])), case .chunk(let h)? = env.body else { return }
        let payload = input.count - 2 - n
        for e in [
            ExpectedChunk(operation: .allReduce, ringStep: 1, chunkIndex: 0, dtype: .f32, offset: 0, count: 4, totalCount: 8),
            ExpectedChunk(operation: .allGather, ringStep: 0, chunkIndex: 0, offset: 0, origin: 1)
        ] {
            _ = e.mismatch(h, sequence: 0, layoutFingerprint: 0, payloadBytes: payload)
        }
    }

    /// Input: a 2-byte little-endian shape length, the shape, then the rows.
    static func dataRows(_ input: [UInt8]) {
        guard input.count >= 2 else { return }
        let n = min(Int(input[0]) | Int(input[1]) << 8, input.count - 2)
        dataRows(shape: Array(input[2..<2 + n]), rows: Array(input[(2 + n)...]))
    }

    static func dataRows(shape: [UInt8], rows: [UInt8]) {
        _ = try? ImageDataset(shape: shape, rows: rows)
        _ = try? TabularDataset(shape: shape, rows: rows)
        _ = try? TokenSequence(shape: shape, rows: rows)
    }
}
