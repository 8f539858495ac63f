import TetherJobFile
import Foundation
import TetherComm
import TetherMessages
import TetherData
import TetherNN
import TetherONNX
import TetherTensor
import TetherTrain

extension FuzzTarget {
    /// Real messages and files to start from: what the code under test writes and reads when it works.
    public var seeds: [[UInt8]] {
        switch self {
        case .envelope: Self.envelopes + Self.envelopesAtTheBounds
        case .assign: Self.configsAtTheBounds
        case .chunk:
            Self.chunkHeaders.map { header, payload in [UInt8(header.count & 0xFF), UInt8(header.count >> 8)] + header + payload }
        case .dataRows:
            Self.servedRows.map { shape, rows in [UInt8(shape.count & 0xFF), UInt8(shape.count >> 8)] + shape + rows }
        case .safetensors: [Self.checkpoint, [UInt8](Safetensors.encode(.init(tensors: ["w": .init(floats: [1, 2, 3, 4], shape: [2, 2])])))]
        case .idx:
            [[0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 2] + [UInt8](0..<8), [0, 0, 8, 1, 0, 0, 0, 3, 1, 2, 3]]
                + Self.fileHead("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte", bytes: 64)
        case .csvSchema:
            [
                Array(Self.adultSchemaText.utf8),
                Array("columns a, b, c, y\ncategorical a, b\nnumeric c\nlabel y 1\ncross a, b\nheader yes\n".utf8)
            ]
        case .csvRows:
            [
                Array(
                    ("39, State-gov, 77516, Bachelors, 13, Never-married, Adm-clerical, Not-in-family, White, Male, 2174, 0, 40, United-States, <=50K\n"
                        + "50, Self-emp-not-inc, 83311, Bachelors, 13, Married-civ-spouse, Exec-managerial, Husband, White, Male, 0, 0, 13, United-States, >50K\n")
                        .utf8),
                Array("a,b,c,y\nx,y,1.5,1\nz,w,-2,0\n".utf8)
            ]
        case .onnx: [Self.onnxModel]
        case .jobFile:
            [
                Array(
                    "# a job file\nmodel: mlp-wn\ndata: fashion-mnist\nepochs: 10\nbatch: 64\nhidden: [256, 128]\nweight-norm: true\nworker:\n  threads: 2\ncoordinator:\n  workers: 4\n"
                        .utf8)
            ]
        }
    }

    static let adultSchemaText = """
        columns age, workclass, fnlwgt, education, education_num, marital_status, occupation, relationship, race, gender, capital_gain, capital_loss, hours_per_week, native_country, income_bracket
        categorical workclass, education, marital_status, occupation, relationship, race, gender, native_country
        numeric age, fnlwgt, education_num, capital_gain, capital_loss, hours_per_week
        label income_bracket >50K, >50K.
        cross education, occupation
        skip-prefix |
        """

    static func fileHead(_ path: String, bytes: Int) -> [[UInt8]] {
        guard let h = FileHandle(forReadingAtPath: path) else { return [] }
        defer { try? h.close() }
        return [[UInt8](h.readData(ofLength: bytes))]
    }

    /// A small real checkpoint: a 2x2-pixel mlp's file as `train` writes it (parameters, optimizer
    /// state, metadata, checksums).
    static let checkpoint: [UInt8] = {
        let config = TrainingConfig.defaults(for: "mlp")
        var rng = RNG(seed: 1)
        let model = try! ShippedSpecs.predictor("mlp", height: 2, width: 2, classes: 3, rng: &rng, as: Float.self)!
        let optimizer = try! Optimizer<Float>(config.optimizer, layout: model.arena.layout, ftrlParameters: model.ftrlParameters)
        let file = Checkpoint.file(model: model, optimizer: optimizer, config: config, state: TrainingState(rng: model.context.rng))
        return [UInt8](Safetensors.encode(file))
    }()

    static var envelopes: [[UInt8]] {
        let config = [UInt8](try! JSONEncoder().encode(TrainingConfig.defaults(for: "mlp-wn")))
        var assign = Assign(
            rank: 1, worldSize: 2, ring: ["tcp://10.0.0.1:7071", "tcp://10.0.0.2:7071"], configJSON: config,
            hashEvery: 50, checkpointEvery: 0, bucketBytes: 1 << 20)
        let keys = (0..<2).map { _ in try! CurveKeyPair.generate() }
        (assign.ringSecretKey, assign.ringPublicKeys) = (keys[1].secretKey, keys.map(\.publicKey))
        let bodies: [Envelope.Body] = [
            .hello(.init(advertiseAddress: "tcp://10.0.0.2:7071", tetherVersion: "tether", threads: 2)),
            .assign(assign),
            .ready(.init(parameterHash: 0x1234_5678_9abc_def0, layoutFingerprint: 42)),
            .start,
            .stepReport(
                .init(
                    globalStep: 1, epoch: 0, lossSum: 147.2, count: 64, correct: 40, computeSeconds: 0.01, allreduceSeconds: 0.002,
                    optimizerSeconds: 0.001, parameterHash: 0, waitSeconds: 0.001)),
            .evalReport(.init(epoch: 0, lossSum: 30, count: 100, correct: 80, scores: [0.1, 0.9], labels: [0, 1])),
            .checkpoint(.init(globalStep: 5, safetensors: Array(checkpoint.prefix(4096)))),
            .heartbeat, .finish,
            .abort(.init(originRank: 1, reason: "out of memory")),
            .dataRequest(.init(split: 0, indices: [0, 2, 1])),
            .dataRows(.init(split: 0, count: 3, shape: images.encodedShape(), rows: images.encodedRows([0, 1]), error: "")),
            .chunk(header(.allReduce)),
            .stop(.init(signal: 15, reason: "rank 1 received SIGTERM")),
            .reform(
                .init(
                    ringEpoch: 1, rank: 0, ring: ["tcp://10.0.0.2:7071"], ringPublicKeys: [keys[1].publicKey],
                    reason: "worker rank 0 has been silent"))
        ]
        return bodies.map { Envelope(jobID: "tether", senderRank: 1, body: $0).encoded() }
    }

    static func header(_ op: ChunkHeader.Operation) -> ChunkHeader {
        ChunkHeader(
            operation: op, sequence: 0, step: 0, bucket: 0, ringStep: 1, chunkIndex: 0, dtype: .f32, totalCount: 8, offset: 0,
            elementCount: 4, checksum: 0, layoutFingerprint: 0, originRank: -1)
    }

    static var chunkHeaders: [(header: [UInt8], payload: [UInt8])] {
        var gather = header(.allGather)
        (gather.ringStep, gather.dtype, gather.totalCount, gather.elementCount, gather.originRank) = (0, .bytes, 5, 5, 1)
        return [
            (Envelope(jobID: "tether", senderRank: 0, body: .chunk(header(.allReduce))).encoded(), [UInt8](repeating: 1, count: 16)),
            (Envelope(jobID: "tether", senderRank: 0, body: .chunk(gather)).encoded(), [1, 2, 3, 4, 5])
        ]
    }

    static var servedRows: [(shape: [UInt8], rows: [UInt8])] {
        let table = TabularDataset(
            categoricalNames: ["a", "b"], numericNames: ["c"], crosses: [[0, 1]], categorical: [1, 2, 3, 4], numeric: [0.5, -1],
            labels: [0, 1])
        let tokens = TokenSequence(vocabulary: Vocabulary(words: ["<eos>", "<unk>", "the"]), tokens: [0, 2, 1, 2])
        return [
            (images.encodedShape(), images.encodedRows([0, 1, 2])), (table.encodedShape(), table.encodedRows([0, 1])),
            (tokens.encodedShape(), tokens.encodedRows([0, 1, 2, 3]))
        ]
    }

    /// Each family's default configuration, then the same with one numeric setting at a time set to
    /// 2^31, 2^62 and 2^63-1: what a hostile coordinator would try first.
    static var configsAtTheBounds: [[UInt8]] {
        var seeds: [[UInt8]] = []
        for family in ["mlp-wn", "cnn-wn", "autoencoder-tied", "lm-tied", "wide-deep"] {
            let json = try! JSONSerialization.jsonObject(with: JSONEncoder().encode(TrainingConfig.defaults(for: family)))
            seeds.append(try! JSONSerialization.data(withJSONObject: json, options: [.sortedKeys]).map { $0 })
            for path in numericPaths(json) {
                for value in [Int64(1) << 31, Int64(1) << 62, Int64.max] {
                    let changed = replacing(json, at: path, with: NSNumber(value: value))
                    seeds.append(try! JSONSerialization.data(withJSONObject: changed, options: [.sortedKeys]).map { $0 })
                }
            }
        }
        return seeds
    }

    /// Assigns carrying a sample of those configurations, and DataRequests at the bounds of their
    /// fields (indices of 2^31 and 2^32-1, one row more than a request may ask for; a split other than
    /// 0 and 1 the decoder refuses, so the fuzzer starts from those it takes).
    static var envelopesAtTheBounds: [[UInt8]] {
        let assigns = configsAtTheBounds.enumerated().filter { $0.offset % 7 == 0 }.map { _, config in
            Assign(
                rank: 0, worldSize: 1, ring: ["tcp://10.0.0.1:7071"], configJSON: config, hashEvery: 1, checkpointEvery: 0,
                bucketBytes: 1 << 20)
        }
        let requests: [DataRequest] = [
            .init(split: 1, indices: [.max, 1 << 31]),
            .init(split: 0, indices: [UInt32](repeating: .max, count: 4097))
        ]
        return (assigns.map { Envelope.Body.assign($0) } + requests.map { .dataRequest($0) }).map {
            Envelope(jobID: "tether", senderRank: 1, body: $0).encoded()
        }
    }

    /// The key paths of a JSON object's numbers (not its booleans).
    static func numericPaths(_ json: Any, _ prefix: [String] = []) -> [[String]] {
        if let object = json as? [String: Any] {
            return object.keys.sorted().flatMap { numericPaths(object[$0]!, prefix + [$0]) }
        }
        if let n = json as? NSNumber, String(cString: n.objCType) != "c" { return [prefix] }  // "c": a boolean
        return []
    }

    static func replacing(_ json: Any, at path: [String], with value: Any) -> Any {
        guard let key = path.first, var object = json as? [String: Any] else { return value }
        object[key] = replacing(object[key]!, at: Array(path.dropFirst()), with: value)
        return object
    }
}

extension FuzzTarget {
    /// A small model: a Gemm over an initializer and an int64 shape, with attributes of three kinds.
    static let onnxModel = ONNXModel(
        graph: ONNXGraph(
            name: "seed",
            nodes: [
                ONNXNode("Gemm", name: "g", inputs: ["input", "w"], outputs: ["y"], attributes: [ONNXAttribute("transB", .int(1))]),
                ONNXNode("Reshape", name: "r", inputs: ["y", "s"], outputs: ["z"], attributes: [ONNXAttribute("alpha", .float(0.5))])
            ],
            initializers: [ONNXTensor("w", dims: [2, 3], floats: [1, 2, 3, 4, 5, 6]), ONNXTensor("s", dims: [2], int64s: [-1, 2])],
            inputs: [ONNXValue("input", shape: [.named("batch"), .size(3)])], outputs: [ONNXValue("z", shape: nil)])
    ).serialized()
}
