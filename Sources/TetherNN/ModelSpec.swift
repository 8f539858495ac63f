import TetherTensor

/// A network declared as data (a job file's `model:`, or `--model FILE.yaml`): its input's shape, its
/// layers in order and its loss. Like a Keras model config or Caffe's prototxt, every layer's input
/// shape is inferred from the one before, and a layer that does not fit the shape it gets is refused
/// naming its index, its kind and both shapes. Parameter names are PyTorch's nn.Sequential's:
/// `layers.<index>.weight` (`weight_g`/`weight_v` weight-normalized), the index counting every layer.
///
/// Shapes: an image is (C, H, W), features are (F), a sequence (T, F) (T steps of F values), a table
/// (F categorical, M numeric) columns of a CSV file, tokens T ids of a vocabulary of V. A table's
/// categories and tokens go through an `embedding` first (giving features, or a sequence), and a
/// sequence through an `lstm` (giving its last step's features, or every step's). Images travel in Tether's conv layout between
/// conv layers; the network's input is rearranged before the first layer when the input is an image,
/// and `flatten` goes back to (B, C*H*W) in PyTorch's NCHW order.
public struct ModelSpec: Codable, Equatable, Sendable {
    /// A name for logs and checkpoints (the file's, without its extension).
    public var name: String
    /// (C, H, W) or (F); empty when the input is a `table`.
    public var input: [Int]
    /// A table's columns (`input: {categorical: F, numeric: M}`), as a CSV schema gives them.
    public var table: TableColumns?
    /// Token ids (`input: {tokens: T, vocabulary: V}`): T whole numbers in 0..<V a sample.
    public var tokens: TokenInput?
    /// Wide & Deep's wide tower beside the layers (the deep tower) on a table input: its one logit is
    /// added to the layers' one output.
    public var wide: WideTower?
    public var layers: [LayerSpec]
    public var loss: Loss

    /// cross-entropy: softmax over the last layer's K class scores; binary-cross-entropy: the logistic
    /// loss of the last layer's one logit against labels 0 and 1 (PyTorch's BCEWithLogitsLoss); mse and
    /// l1: the mean squared or absolute error of the last layer's K values against K regression targets
    /// (PyTorch's MSELoss and L1Loss).
    public enum Loss: String, Codable, Sendable, CaseIterable {
        case crossEntropy = "cross-entropy"
        case binaryCrossEntropy = "binary-cross-entropy"
        case mse, l1
        public var isRegression: Bool { self == .mse || self == .l1 }
    }

    public struct TableColumns: Codable, Equatable, Sendable {
        public var categorical: Int, numeric: Int
        public init(categorical: Int, numeric: Int) { (self.categorical, self.numeric) = (categorical, numeric) }
    }

    /// `wide: {buckets: W, crosses: [[0, 2]], ftrl: true}`: W hashed weights for the categorical values
    /// and the crosses of the categorical columns named by position; updated by FTRL-Proximal (the
    /// paper's; `ftrl: false` gives it the run's optimizer, which must then take row-sparse gradients).
    public struct WideTower: Codable, Equatable, Sendable {
        public var buckets: Int
        public var crosses: [[Int]]
        public var ftrl: Bool
        public init(buckets: Int = 1 << 20, crosses: [[Int]] = [], ftrl: Bool = true) {
            (self.buckets, self.crosses, self.ftrl) = (buckets, crosses, ftrl)
        }
    }

    public struct TokenInput: Codable, Equatable, Sendable {
        public var steps: Int, vocabulary: Int
        public init(steps: Int, vocabulary: Int) { (self.steps, self.vocabulary) = (steps, vocabulary) }
    }

    public init(
        name: String, input: [Int], table: TableColumns? = nil, tokens: TokenInput? = nil, layers: [LayerSpec], loss: Loss = .crossEntropy
    ) {
        (self.name, self.input, self.table, self.tokens, self.layers, self.loss) = (name, input, table, tokens, layers, loss)
    }

    /// What the network's outputs are trained against.
    public var objective: Objective {
        switch loss {
        case .crossEntropy: .classes
        case .binaryCrossEntropy: .binary
        case .mse: .squaredError
        case .l1: .absoluteError
        }
    }

    /// The spec fitted to (1, height, width) images of `classes` classes, as the image families fit their
    /// shipped spec to the data: a features input becomes height x width, an unflatten to one channel
    /// takes the new sides, and the last layer (dense) scores `classes`.
    public func forImages(height: Int, width: Int, classes: Int) -> ModelSpec {
        var s = self
        if s.input.count == 1 { s.input = [height * width] }
        for i in s.layers.indices where s.layers[i].kind == .unflatten && s.layers[i].shape?.first == 1 {
            s.layers[i].shape = [1, height, width]
        }
        if let last = s.layers.indices.last, s.layers[last].kind == .dense { s.layers[last].out = classes }
        return s
    }

    /// The largest value of any size a spec gives (channels, features, kernel, image side), and the most
    /// layers: a spec arrives from a file or a coordinator, and a size within these keeps every product
    /// of them far from overflow; what they multiply to is checked against memory (`parameterCount`).
    public static let largestSize = 1 << 24, mostLayers = 1000
}

/// One layer of a spec. Only the settings of its kind may be given (the parser checks that).
public struct LayerSpec: Codable, Equatable, Sendable {
    public enum Kind: String, Codable, Sendable, CaseIterable {
        case dense, conv2d
        case maxPool = "max-pool", avgPool = "avg-pool"
        case flatten, unflatten, relu
        case leakyRelu = "leaky-relu"
        case tanh, sigmoid, gelu, dropout
        case batchNorm = "batch-norm"
        case embedding, lstm
        case concat
    }
    public var kind: Kind
    /// dense: output features; conv2d: output channels.
    public var out: Int?
    /// conv2d and pools: the square window's side; stride defaults to 1 for conv2d and to the kernel
    /// for pools; padding (conv2d) to 0.
    public var kernel: Int?, stride: Int?, padding: Int?
    public var bias: Bool?
    public var weightNorm: Bool?
    /// dropout: the probability of dropping (0.5).
    public var rate: Double?
    /// leaky-relu: the negative slope (0.01).
    public var slope: Double?
    /// batch-norm: the full form (PyTorch's BatchNorm1d/2d), or with `meanOnly` the mean-only form of the
    /// weight-norm paper (y = x - mean + b).
    public var meanOnly: Bool?
    /// unflatten: the image (C, H, W) that features become (PyTorch's nn.Unflatten(1, shape)).
    public var shape: [Int]?
    /// embedding: rows per categorical column (values hash into them), and whether its gradient is
    /// row-sparse (only the rows a step touched travel and update; --optimizer adagrad or plain sgd).
    public var buckets: Int?, sparse: Bool?
    /// dense: the index of an earlier dense layer whose weight this one uses (`tie: 0`, or `tie: layers.0`):
    /// the same (O, I) weight, or its transpose when this layer maps O features to I (a tied autoencoder's
    /// decoder); or of a token embedding, whose (V, D) table is this layer's weight when it scores the
    /// vocabulary from D features (tied input and output embeddings, Press & Wolf 2016). One parameter,
    /// both uses' gradients summed into it; the bias stays this layer's own.
    public var tie: Int?
    /// lstm: every step's hidden state (T, H) rather than the last step's (H) (Keras' return_sequences).
    public var sequences: Bool?
    /// concat: lists of layers, each run on this layer's input (an empty one passes it on), whose outputs
    /// are joined along the features or channels (torch.cat(..., dim=1)). A branch is a chain of the
    /// layers an image or features take, without a concat of its own; its ties are to its own layers.
    public var branches: [[LayerSpec]]?

    public init(_ kind: Kind) { self.kind = kind }
    /// A layer of `kind` with the settings `set` gives: `LayerSpec(.dense) { $0.out = 10 }`.
    public init(_ kind: Kind, _ set: (inout LayerSpec) -> Void) {
        self.kind = kind
        set(&self)
    }

    /// The settings each kind takes, by their spec names.
    public static func settings(of kind: Kind) -> [String] {
        switch kind {
        case .dense: ["out", "bias", "weight-norm", "tie"]
        case .conv2d: ["out", "kernel", "stride", "padding", "bias", "weight-norm"]
        case .maxPool, .avgPool: ["kernel", "stride"]
        case .leakyRelu: ["slope"]
        case .dropout: ["rate"]
        case .batchNorm: ["mean-only"]
        case .unflatten: ["shape"]
        case .embedding: ["out", "buckets", "sparse"]
        case .lstm: ["out", "weight-norm", "sequences"]
        case .concat: ["branches"]
        case .flatten, .relu, .tanh, .sigmoid, .gelu: []
        }
    }
}

/// A value's shape between layers: an image (C, H, W) or features (F).
public enum SpecShape: Equatable, Sendable, CustomStringConvertible {
    case image(channels: Int, height: Int, width: Int)
    case features(Int)
    /// A table's row: F categorical values, M numbers.
    case table(categorical: Int, numeric: Int)
    /// T steps of F values, step-major.
    case sequence(steps: Int, features: Int)
    /// T token ids of a vocabulary of V.
    case tokens(steps: Int, vocabulary: Int)

    /// The values a sample holds (a table's: its F hashes and M numbers).
    public var count: Int {
        switch self {
        case .image(let c, let h, let w): c * h * w
        case .features(let f): f
        case .table(let f, let m): f + m
        case .sequence(let t, let f): t * f
        case .tokens(let t, _): t
        }
    }
    public var description: String {
        switch self {
        case .image(let c, let h, let w): "(\(c), \(h), \(w))"
        case .features(let f): "(\(f))"
        case .table(let f, let m): "a table of \(f) categorical and \(m) numeric columns"
        case .sequence(let t, let f): "(\(t) steps, \(f))"
        case .tokens(let t, let v): "\(t) tokens of a vocabulary of \(v)"
        }
    }
}

public struct SpecError: Error, CustomStringConvertible {
    public let description: String
    public init(_ d: String) { description = d }
}

extension ModelSpec {
    /// The input as a shape, or why it is not one.
    public func inputShape() throws -> SpecShape {
        if let table {
            guard input.isEmpty, (0...Self.largestSize).contains(table.categorical), (0...Self.largestSize).contains(table.numeric),
                table.categorical + table.numeric > 0
            else {
                throw SpecError(
                    "model spec \(name): a table input is {categorical: F, numeric: M}, each in 0...\(Self.largestSize), one above 0")
            }
            return table.categorical == 0 ? .features(table.numeric) : .table(categorical: table.categorical, numeric: table.numeric)
        }
        if let tokens {
            guard input.isEmpty, (1...Self.largestSize).contains(tokens.steps), (1...Self.largestSize).contains(tokens.vocabulary) else {
                throw SpecError("model spec \(name): a token input is {tokens: T, vocabulary: V}, each in 1...\(Self.largestSize)")
            }
            return .tokens(steps: tokens.steps, vocabulary: tokens.vocabulary)
        }
        guard input.allSatisfy({ (1...Self.largestSize).contains($0) }) else {
            throw SpecError("model spec \(name): input \(input): each size must be in 1...\(Self.largestSize)")
        }
        switch input.count {
        case 1: return .features(input[0])
        case 2:
            guard input[0] * input[1] <= Self.largestSize * 64 else {
                throw SpecError("model spec \(name): input \(input) holds more than \(Self.largestSize * 64) values a sample")
            }
            return .sequence(steps: input[0], features: input[1])
        case 3:
            let (c, h, w) = (input[0], input[1], input[2])
            guard c * h <= Self.largestSize, c * h * w <= Self.largestSize * 64 else {
                throw SpecError("model spec \(name): input \(input) holds more than \(Self.largestSize * 64) values a sample")
            }
            return .image(channels: c, height: h, width: w)
        default: throw SpecError("model spec \(name): input \(input): give (C, H, W) for images, (T, F) for sequences or (F) for features")
        }
    }

    /// Every layer's output shape, in order (the last is the network's output), or an error naming the
    /// first layer that does not fit the shape it gets.
    public func shapes() throws -> [SpecShape] {
        guard !layers.isEmpty, layers.count <= Self.mostLayers else {
            throw SpecError("model spec \(name): \(layers.count) layers; give 1...\(Self.mostLayers)")
        }
        var shape = try inputShape()
        var out: [SpecShape] = []
        for (i, layer) in layers.enumerated() {
            func fail(_ why: String) -> SpecError {
                SpecError("model spec \(name): layer \(i) (\(layer.kind.rawValue)) gets \(shape): \(why)")
            }
            func size(_ v: Int?, _ what: String, default d: Int? = nil, from lowest: Int = 1) throws -> Int {
                guard let v = v ?? d else { throw fail("give its \(what)") }
                guard (lowest...Self.largestSize).contains(v) else { throw fail("\(what) \(v) is not in \(lowest)...\(Self.largestSize)") }
                return v
            }
            if case .tokens = shape, layer.kind != .embedding { throw fail("tokens go through an embedding first: - embedding: 32") }
            if case .sequence = shape, ![.lstm, .flatten, .dropout, .relu, .leakyRelu, .tanh, .sigmoid, .gelu].contains(layer.kind) {
                throw fail("a sequence goes through an lstm (its last step's features), or a flatten")
            }
            if case .table = shape, layer.kind != .embedding {
                throw fail("a table's categorical columns go through an embedding first: - embedding: {out: 8, buckets: 1000}")
            }
            switch layer.kind {
            case .embedding where i == 0 && tokens != nil:
                guard case .tokens(let t, let v) = shape else { throw fail("embedding takes tokens") }
                guard layer.buckets == nil else { throw fail("tokens index the vocabulary's \(v) rows: drop buckets") }
                let d = try size(layer.out, "out")
                guard v <= Self.largestSize * 64 / d, t <= Self.largestSize * 64 / d else {
                    throw fail("a table of \(v) x \(d) is too large")
                }
                shape = .sequence(steps: t, features: d)
            case .lstm:
                guard case .sequence(let t, let f) = shape else { throw fail("lstm takes a sequence (T, F)") }
                let h = try size(layer.out, "out")
                guard 4 * h <= Self.largestSize, f <= Self.largestSize, t * h <= Self.largestSize * 64 else {
                    throw fail("an lstm of \(h) over (\(t), \(f)) is too large")
                }
                shape = layer.sequences == true ? .sequence(steps: t, features: h) : .features(h)
            case .embedding:
                guard case .table(let f, let m) = shape, i == 0 else {
                    throw fail(
                        "embedding is the first layer of a table input (input: {categorical: F, numeric: M}) or of tokens (input: {tokens: T, vocabulary: V})"
                    )
                }
                let d = try size(layer.out, "out"), r = try size(layer.buckets, "buckets", default: 1000)
                guard f * r <= Self.largestSize * 64 / d else { throw fail("\(f) tables of \(r) x \(d) are too large") }
                shape = .features(f * d + m)
            case .dense:
                guard case .features(let f) = shape else { throw fail("dense takes features (F); put a flatten before it") }
                let o = try size(layer.out, "out")
                guard f * o <= Self.largestSize * 64 else {
                    throw fail("a weight of \(o) x \(f) is more than \(Self.largestSize * 64) values")
                }
                if let t = layer.tie, (0..<i).contains(t), layers[t].kind == .embedding, case .tokens(_, let v) = try inputShape() {
                    // Press & Wolf: the output layer's (V, D) weight is the token embedding's table
                    guard layers[t].sparse != true, layer.weightNorm != true else {
                        throw fail("tie: \(t): a tied table is a plain weight with a dense gradient (no sparse, no weight-norm)")
                    }
                    guard (o, f) == (v, layers[t].out ?? 0) else {
                        throw fail("tie: \(t): the embedding's table is \(v) x \(layers[t].out ?? 0), this layer's weight \(o) x \(f)")
                    }
                } else if let t = layer.tie {
                    guard (0..<i).contains(t), layers[t].kind == .dense, layers[t].tie == nil else {
                        throw fail("tie: \(t) is not an earlier dense layer with a weight of its own, or a token embedding")
                    }
                    guard layers[t].weightNorm != true, layer.weightNorm != true else {
                        throw fail("a tied weight is a plain one: layer \(t) and this one without weight-norm")
                    }
                    guard layer.bias != false else { throw fail("a tied layer keeps a bias of its own (drop bias: false)") }
                    guard case .features(let tf) = t == 0 ? try inputShape() : out[t - 1], case .features(let to) = out[t],
                        (o, f) == (to, tf) || (o, f) == (tf, to)
                    else { throw fail("tie: \(t): its weight is not \(o) x \(f) or its transpose") }
                }
                shape = .features(o)
            case .conv2d:
                guard case .image(let c, let h, let w) = shape else { throw fail("conv2d takes an image (C, H, W)") }
                let o = try size(layer.out, "out"), k = try size(layer.kernel, "kernel")
                let s = try size(layer.stride, "stride", default: 1), p = try size(layer.padding, "padding", default: 0, from: 0)
                guard h + 2 * p >= k, w + 2 * p >= k else { throw fail("a \(k)x\(k) kernel does not fit \(h)x\(w) with padding \(p)") }
                guard o * c * k * k <= Self.largestSize * 64 else { throw fail("a weight of \(o) x \(c) x \(k) x \(k) is too large") }
                shape = .image(channels: o, height: (h + 2 * p - k) / s + 1, width: (w + 2 * p - k) / s + 1)
            case .maxPool, .avgPool:
                guard case .image(let c, let h, let w) = shape else { throw fail("pooling takes an image (C, H, W)") }
                let k = try size(layer.kernel, "kernel"), s = try size(layer.stride, "stride", default: k)
                guard h >= k, w >= k else { throw fail("a \(k)x\(k) window does not fit \(h)x\(w)") }
                shape = .image(channels: c, height: (h - k) / s + 1, width: (w - k) / s + 1)
            case .flatten:
                shape = .features(shape.count)
            case .unflatten:
                guard case .features(let f) = shape else { throw fail("unflatten takes features (F)") }
                guard let s = layer.shape, s.count == 3, s.allSatisfy({ (1...Self.largestSize).contains($0) }), s[0] * s[1] * s[2] == f
                else {
                    throw fail("give the image (C, H, W) its \(f) features become, e.g. unflatten: [1, 28, 28]")
                }
                shape = .image(channels: s[0], height: s[1], width: s[2])
            case .dropout:
                guard (0..<1).contains(layer.rate ?? 0.5) else { throw fail("rate \(layer.rate!) is not in [0, 1)") }
            case .leakyRelu:
                guard (layer.slope ?? 0.01).isFinite else { throw fail("slope \(layer.slope!) is not a number") }
            case .relu, .tanh, .sigmoid, .gelu, .batchNorm:
                break
            case .concat:
                shape = try joinedShape(of: layer, index: i, over: shape)
            }
            out.append(shape)
        }
        if let wide {
            guard case .table(let f, _) = try inputShape() else {
                throw SpecError(
                    "model spec \(name): a wide tower hashes a table's categorical columns: input {categorical: F, numeric: M}, F > 0")
            }
            guard out.last == .features(1) else {
                throw SpecError(
                    "model spec \(name): with a wide tower the last layer gives one value (1), the two towers' sum; it gives \(out.last!)")
            }
            guard (1...Self.largestSize * 64).contains(wide.buckets) else {
                throw SpecError("model spec \(name): wide buckets \(wide.buckets) is not in 1...\(Self.largestSize * 64)")
            }
            guard wide.crosses.count <= 64, wide.crosses.allSatisfy({ $0.count == 2 && $0.allSatisfy { (0..<f).contains($0) } }) else {
                throw SpecError(
                    "model spec \(name): wide crosses are at most 64 pairs of categorical column positions in 0..<\(f), e.g. [[0, 2]]")
            }
        }
        return out
    }

    /// Most branches a concat takes.
    public static let mostBranches = 16

    /// Branch b of the concat at layer `index` as a spec of its own over `shape` (what the concat gets):
    /// its errors then name the branch and its own layer.
    public func branch(_ b: Int, of layer: LayerSpec, index: Int, over shape: SpecShape) -> ModelSpec {
        let input: [Int]
        switch shape {
        case .image(let c, let h, let w): input = [c, h, w]
        case .features(let f): input = [f]
        default: input = []
        }
        return ModelSpec(name: "\(name) layer \(index) branch \(b)", input: input, layers: layer.branches?[b] ?? [])
    }

    /// A concat's output: its branches' outputs joined, features to features, or images of the same
    /// sides channel to channel.
    private func joinedShape(of layer: LayerSpec, index i: Int, over shape: SpecShape) throws -> SpecShape {
        func fail(_ why: String) -> SpecError { SpecError("model spec \(name): layer \(i) (concat) gets \(shape): \(why)") }
        guard let branches = layer.branches, (1...Self.mostBranches).contains(branches.count) else {
            throw fail("give its branches, 1 to \(Self.mostBranches) lists of layers: concat: [[conv2d: {out: 8, kernel: 1}], []]")
        }
        switch shape {
        case .image, .features: break
        default: throw fail("a concat joins branches over an image or features")
        }
        var joined: SpecShape?
        for (b, branch) in branches.enumerated() {
            if let nested = branch.firstIndex(where: { [.concat, .embedding, .lstm].contains($0.kind) }) {
                throw fail("branch \(b): layer \(nested) (\(branch[nested].kind.rawValue)) is not taken inside a branch")
            }
            let end = branch.isEmpty ? shape : try self.branch(b, of: layer, index: i, over: shape).shapes().last!
            switch (joined, end) {
            case (nil, _): joined = end
            case (.features(let a)?, .features(let f)) where a + f <= Self.largestSize: joined = .features(a + f)
            case (.image(let a, let h, let w)?, .image(let c, let h2, let w2)) where (h, w) == (h2, w2) && a + c <= Self.largestSize:
                joined = .image(channels: a + c, height: h, width: w)
            default: throw fail("branch \(b) gives \(end), which does not join \(joined!) (features to features, images of the same sides)")
            }
        }
        return joined!
    }

    /// The network of the spec's loss as one model: the layers, the wide tower when there is one (its
    /// entries after the layers'), parameters drawn from `rng`.
    public func predictor<T: Scalar>(kind: String, rng: inout RNG, as: T.Type = T.self) throws -> Predictor<T> {
        var layout = ArenaLayout()
        let network = try network(&layout, as: T.self)
        var tower: WideLinear<T>?
        if let wide, case .table(let f, let m) = try inputShape() {
            tower = WideLinear(&layout, fields: f, numeric: m, buckets: wide.buckets, crosses: wide.crosses)
        }
        return Predictor(
            kind: kind, layout: layout, network: network, wide: tower, ftrl: wide?.ftrl ?? false, objective: objective, rng: &rng)
    }

    /// The classes the network tells apart: its output's features (cross-entropy), or 2 from one logit;
    /// for a regression loss, the targets' count per sample (its output's features).
    public func classes() throws -> Int {
        if loss.isRegression {
            guard case .features(let k)? = try shapes().last else {
                throw SpecError(
                    "model spec \(name): with \(loss.rawValue) the last layer gives the targets' values (F); it gives \(try shapes().last!)"
                )
            }
            return k
        }
        if loss == .binaryCrossEntropy {
            guard try shapes().last == .features(1) else {
                throw SpecError(
                    "model spec \(name): with binary-cross-entropy the last layer gives one logit (1); it gives \(try shapes().last!)")
            }
            return 2
        }
        guard case .features(let k)? = try shapes().last, k >= 2 else {
            throw SpecError(
                "model spec \(name): with \(loss.rawValue) the last layer gives the classes' scores (F >= 2); it gives \(try shapes().last!)"
            )
        }
        return k
    }

    /// The values a sample keeps between forward and backward: every layer's output, and an lstm's gates
    /// and states (7 per hidden unit and step).
    public func activationCount() throws -> Int {
        var before = try inputShape(), total = before.count
        for (layer, after) in zip(layers, try shapes()) {
            total += after.count
            if layer.kind == .lstm, case .sequence(let t, _) = before { total += 7 * t * (layer.out ?? 1) }
            for b in (layer.branches ?? []).indices where !(layer.branches![b].isEmpty) {
                total += try branch(b, of: layer, index: 0, over: before).activationCount()
            }
            before = after
        }
        return total
    }

    /// The parameters the spec's layers hold (weights, biases, weight-norm scales): what its memory
    /// estimate counts. Every size is checked by `shapes`, so the products cannot overflow.
    public func parameterCount() throws -> Int { try parameterCounts().reduce(0, +) + (wide?.buckets ?? 0) }

    /// Each layer's parameters (a tied layer counts its bias: the weight is its source's).
    public func parameterCounts() throws -> [Int] {
        let shapes = try shapes()
        var counts: [Int] = []
        var before = try inputShape()
        for (layer, after) in zip(layers, shapes) {
            var n = 0
            switch (layer.kind, before, after) {
            case (.dense, .features(let f), .features(let o)):
                n = (layer.tie == nil ? f * o : 0) + (layer.bias ?? true ? o : 0) + (layer.weightNorm ?? false ? o : 0)
            case (.conv2d, .image(let c, _, _), .image(let o, _, _)):
                let k = layer.kernel ?? 1
                n = o * c * k * k + (layer.bias ?? true ? o : 0) + (layer.weightNorm ?? false ? o : 0)
            case (.batchNorm, _, .features(let f)): n = layer.meanOnly == true ? f : 2 * f
            case (.batchNorm, _, .image(let c, _, _)): n = layer.meanOnly == true ? c : 2 * c
            case (.embedding, .table(let f, _), _): n = f * (layer.buckets ?? 1000) * (layer.out ?? 1)
            case (.embedding, .tokens(_, let v), _): n = v * (layer.out ?? 1)
            case (.lstm, .sequence(_, let f), _):
                let h = layer.out ?? 1
                n = 4 * h * (f + h) + 8 * h + (layer.weightNorm == true ? 8 * h : 0)
            case (.concat, _, _):
                for b in (layer.branches ?? []).indices where !(layer.branches![b].isEmpty) {
                    n += try branch(b, of: layer, index: counts.count, over: before).parameterCount()
                }
            default: n = 0
            }
            counts.append(n)
            before = after
        }
        return counts
    }

    /// The network over `layout`: its layers with PyTorch's names, the input rearranged into the conv
    /// layout first when it is an image.
    public func network<T: Scalar>(_ layout: inout ArenaLayout, as: T.Type = T.self) throws -> Sequential<T> {
        try network(&layout, names: "layers.", buffers: "layers.", inConvLayout: false)
    }

    /// The layers as a network whose parameters are named `names` + "<index>." + their own and whose
    /// buffers `buffers` + the same; an image input arrives in the conv layout already when
    /// `inConvLayout` (a concat's branch), else it is rearranged first.
    func network<T: Scalar>(_ layout: inout ArenaLayout, names: String, buffers: String, inConvLayout: Bool) throws -> Sequential<T> {
        let shapes = try shapes()
        var before = try inputShape()
        var built: [any Layer<T>] = [], prefixes: [String] = []
        var dense: [Int: Dense<T>] = [:], table: [Int: ParameterSlot] = [:]  // by spec index: what a later layer may tie to
        if case .image(let c, let h, let w) = before, !inConvLayout {
            built.append(LayoutSwap<T>(toConv: true, channels: c, height: h, width: w))
            prefixes.append("input.")
        }
        for (i, (layer, after)) in zip(layers, shapes).enumerated() {
            let prefix = names + "\(i)."
            switch (layer.kind, before, after) {
            case (.embedding, .tokens(let t, let v), _):
                let e = TokenEmbedding<T>(
                    &layout, prefix: prefix, steps: t, vocabulary: v, width: layer.out!, sparse: layer.sparse ?? false)
                table[i] = e.table.slot
                built.append(e)
            case (.lstm, .sequence(let t, let f), _):
                built.append(
                    SequenceLSTM<T>(
                        &layout, prefix: prefix, steps: t, inputSize: f, hiddenSize: layer.out!, weightNorm: layer.weightNorm ?? false,
                        sequences: layer.sequences ?? false))
            case (.flatten, .sequence, _): break  // a sequence is already (B, T*F)
            case (.embedding, .table(let f, let m), _):
                built.append(
                    TableEmbedding<T>(
                        &layout, prefix: prefix, fields: f, numeric: m, buckets: layer.buckets ?? 1000, width: layer.out!,
                        sparse: layer.sparse ?? false))
            case (.dense, .features(let f), .features(let o)) where layer.tie.map { table[$0] != nil } ?? false:
                built.append(
                    Dense<T>(
                        &layout, prefix: prefix, sharedWeight: table[layer.tie!]!, inFeatures: f, outFeatures: o, bias: layer.bias ?? true))
            case (.dense, .features(let f), .features(let o)) where layer.tie != nil:
                guard let source = dense[layer.tie!], let slot = source.weightSlot else {
                    throw SpecError("model spec \(name): layer \(i) (dense) ties to layer \(layer.tie!), which has no plain weight")
                }
                if (o, f) == (source.outFeatures, source.inFeatures) {
                    built.append(Dense<T>(&layout, prefix: prefix, sharedWeight: slot, inFeatures: f, outFeatures: o))
                } else {
                    built.append(
                        TransposedDense<T>(
                            &layout, prefix: prefix, transposing: slot, encoderIn: source.inFeatures, encoderOut: source.outFeatures))
                }
            case (.dense, .features(let f), .features(let o)):
                let d = Dense<T>(
                    &layout, prefix: prefix, inFeatures: f, outFeatures: o, bias: layer.bias ?? true, weightNorm: layer.weightNorm ?? false)
                dense[i] = d
                built.append(d)
            case (.conv2d, .image(let c, _, _), .image(let o, _, _)):
                built.append(
                    Conv2d<T>(
                        &layout, prefix: prefix, inChannels: c, outChannels: o, kernel: layer.kernel!, stride: layer.stride ?? 1,
                        padding: layer.padding ?? 0, bias: layer.bias ?? true, weightNorm: layer.weightNorm ?? false))
            case (.maxPool, _, _): built.append(MaxPool2d<T>(kernel: layer.kernel!, stride: layer.stride))
            case (.avgPool, _, _): built.append(AvgPool2d<T>(kernel: layer.kernel!, stride: layer.stride))
            case (.flatten, .image(let c, let h, let w), _): built.append(LayoutSwap<T>(toConv: false, channels: c, height: h, width: w))
            case (.flatten, .features, _): break  // already flat: nothing to do, but the index stays taken
            case (.unflatten, _, .image(let c, let h, let w)): built.append(LayoutSwap<T>(toConv: true, channels: c, height: h, width: w))
            case (.concat, _, _):
                let branches = try layer.branches!.indices.map { b in
                    layer.branches![b].isEmpty
                        ? Sequential<T>([])
                        : try branch(b, of: layer, index: i, over: before).network(
                            &layout, names: prefix + "branches.\(b).", buffers: "", inConvLayout: true)
                }
                built.append(Concat<T>(branches))
            case (.relu, _, _): built.append(Activation<T>.relu())
            case (.leakyRelu, _, _): built.append(Activation<T>(leakySlope: layer.slope ?? 0.01))
            case (.tanh, _, _): built.append(Pointwise<T>(.tanh))
            case (.sigmoid, _, _): built.append(Pointwise<T>(.sigmoid))
            case (.gelu, _, _): built.append(Pointwise<T>(.gelu))
            case (.dropout, _, _): built.append(Dropout<T>(probability: layer.rate ?? 0.5))
            case (.batchNorm, .features(let f), _):
                built.append(
                    layer.meanOnly == true
                        ? MeanOnlyBatchNorm<T>(&layout, prefix: prefix, features: f, channelsFirst: false)
                        : BatchNorm<T>(&layout, prefix: prefix, features: f, channelsFirst: false))
            case (.batchNorm, .image(let c, _, _), _):
                built.append(
                    layer.meanOnly == true
                        ? MeanOnlyBatchNorm<T>(&layout, prefix: prefix, features: c, channelsFirst: true)
                        : BatchNorm<T>(&layout, prefix: prefix, features: c, channelsFirst: true))
            default:
                throw SpecError("model spec \(name): layer \(i) (\(layer.kind.rawValue)) cannot be built on \(before)")
            }
            while prefixes.count < built.count { prefixes.append(buffers + "\(i).") }
            before = after
        }
        poolBeforeActivation(&built, &prefixes)
        return Sequential(built, prefixes: prefixes)
    }

    /// A ReLU (or leaky ReLU, slope >= 0) right before a max pool is run after it: both are
    /// nondecreasing, so max(f(x)) = f(max(x)) bitwise, the window's first maximum is the same element
    /// either way and its gradient dy * f'(x) the same; the activation then sees a quarter of the
    /// values (2x2). Neither has parameters, so no name changes.
    private func poolBeforeActivation<T: Scalar>(_ built: inout [any Layer<T>], _ prefixes: inout [String]) {
        var i = 0
        while i + 1 < built.count {
            if let activation = built[i] as? Activation<T>, activation.slope >= 0, built[i + 1] is MaxPool2d<T> {
                built.swapAt(i, i + 1)
                prefixes.swapAt(i, i + 1)
                i += 2
            } else {
                i += 1
            }
        }
    }
}
