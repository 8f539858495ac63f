import CProtobufC
import Foundation
import TetherWire

// ONNXModel <-> onnx.proto bytes through protoc-c (proto/onnx.proto, Sources/TetherWire). Reading
// treats every byte as hostile: protobuf-c checks the framing; this file then bounds every count,
// rank and dimension, checks each tensor's byte length against its shape with overflow-checked
// products, and refuses what it cannot represent, naming the tensor, node or field.

extension ONNXModel {
    /// Bounds on what a model may declare (a model beyond them is refused, not allocated).
    public enum Limits {
        public static let bytes = Int(Int32.max)  // protobuf's own limit on a message
        public static let nodes = 100_000
        public static let namesPerNode = 1_024
        public static let rank = 8
        public static let elements = 1 << 31  // per tensor
        public static let attributeValues = 1 << 20
    }

    /// Reads external tensor data (a file beside the model): `location` as written in the model,
    /// `offset` and `length` (nil: to the end). The caller keeps the path inside the model's folder.
    public typealias ExternalData = (_ location: String, _ offset: Int, _ length: Int?) throws -> [UInt8]

    /// Parses a model; `source` names it in errors. `external` reads tensors stored beside the model
    /// (nil: such a tensor is an error).
    public init(bytes: [UInt8], source: String, external: ExternalData? = nil) throws {
        func fail(_ why: String) -> ONNXError { ONNXError(source, why) }
        guard !bytes.isEmpty else { throw fail("empty file: not an ONNX model") }
        guard bytes.count <= Limits.bytes else { throw fail("\(bytes.count) bytes: over protobuf's 2 GiB limit") }
        guard let m = bytes.withUnsafeBufferPointer({ onnx__model_proto__unpack(nil, $0.count, $0.baseAddress) }) else {
            throw fail("not an ONNX model: the bytes do not parse as onnx.ModelProto (truncated or another format)")
        }
        defer { onnx__model_proto__free_unpacked(m, nil) }
        let model = m.pointee
        guard let g = model.graph else { throw fail("the model has no graph") }
        var opset: Int64?
        for i in 0..<model.n_opset_import {
            let o = model.opset_import[i]!.pointee
            let domain = o.domain.map { String(cString: $0) } ?? ""
            if domain == "" || domain == "ai.onnx" { opset = o.version }
        }
        guard let opset else { throw fail("the model imports no version of the default operator set (opset_import)") }
        let graph = try ONNXGraph(g.pointee, fail: fail, external: external)
        self.init(opset: opset, graph: graph)
        irVersion = model.has_ir_version != 0 ? model.ir_version : 0
        producer = model.producer_name.map { String(cString: $0) } ?? ""
    }

    /// The model as onnx.proto bytes.
    public func serialized() -> [UInt8] {
        let c = CMemory()
        defer { c.release() }
        var m = Onnx__ModelProto()
        onnx__model_proto__init(&m)
        (m.has_ir_version, m.ir_version) = (1, irVersion)
        m.producer_name = c.string(producer)
        var set = Onnx__OperatorSetIdProto()
        onnx__operator_set_id_proto__init(&set)
        (set.domain, set.has_version, set.version) = (c.string(""), 1, opset)
        m.n_opset_import = 1
        m.opset_import = c.pointers([c.store(set)])
        m.graph = c.store(graph.c(c))
        let size = onnx__model_proto__get_packed_size(&m)
        return [UInt8](unsafeUninitializedCapacity: size) { buffer, count in
            count = onnx__model_proto__pack(&m, buffer.baseAddress)
        }
    }
}

/// C allocations that must outlive one pack call: strings, arrays and messages, freed together.
final class CMemory {
    private var blocks: [UnsafeMutableRawPointer] = []
    func release() {
        blocks.forEach { free($0) }
        blocks = []
    }
    func string(_ s: String) -> UnsafeMutablePointer<CChar> {
        let p = strdup(s)!
        blocks.append(p)
        return p
    }
    func array<T>(_ values: [T]) -> UnsafeMutablePointer<T> {
        let p = malloc(max(1, values.count * MemoryLayout<T>.stride))!.bindMemory(to: T.self, capacity: max(1, values.count))
        p.initialize(from: values, count: values.count)
        blocks.append(p)
        return p
    }
    func store<T>(_ value: T) -> UnsafeMutablePointer<T> { array([value]) }
    func pointers<T>(_ values: [UnsafeMutablePointer<T>]) -> UnsafeMutablePointer<UnsafeMutablePointer<T>?> {
        array(values.map { Optional($0) })
    }
    func strings(_ list: [String]) -> UnsafeMutablePointer<UnsafeMutablePointer<CChar>?> { array(list.map { Optional(string($0)) }) }
}

extension ONNXGraph {
    init(_ g: Onnx__GraphProto, fail: (String) -> ONNXError, external: ONNXModel.ExternalData?) throws {
        guard g.n_node <= ONNXModel.Limits.nodes else { throw fail("\(g.n_node) nodes: more than \(ONNXModel.Limits.nodes)") }
        name = g.name.map { String(cString: $0) } ?? ""
        nodes = try (0..<g.n_node).map { try ONNXNode(g.node[$0]!.pointee, index: $0, fail: fail, external: external) }
        initializers = try (0..<g.n_initializer).map { try ONNXTensor(g.initializer[$0]!.pointee, fail: fail, external: external) }
        inputs = try (0..<g.n_input).map { try ONNXValue(g.input[$0]!.pointee, fail: fail) }
        outputs = try (0..<g.n_output).map { try ONNXValue(g.output[$0]!.pointee, fail: fail) }
    }

    func c(_ c: CMemory) -> Onnx__GraphProto {
        var g = Onnx__GraphProto()
        onnx__graph_proto__init(&g)
        g.name = c.string(name)
        (g.n_node, g.node) = (nodes.count, c.pointers(nodes.map { c.store($0.c(c)) }))
        (g.n_initializer, g.initializer) = (initializers.count, c.pointers(initializers.map { c.store($0.c(c)) }))
        (g.n_input, g.input) = (inputs.count, c.pointers(inputs.map { c.store($0.c(c)) }))
        (g.n_output, g.output) = (outputs.count, c.pointers(outputs.map { c.store($0.c(c)) }))
        return g
    }
}

extension ONNXNode {
    init(_ n: Onnx__NodeProto, index: Int, fail: (String) -> ONNXError, external: ONNXModel.ExternalData?) throws {
        opType = n.op_type.map { String(cString: $0) } ?? ""
        name = n.name.map { String(cString: $0) } ?? ""
        domain = n.domain.map { String(cString: $0) } ?? ""
        let label = "node \(index) (\(name.isEmpty ? opType : name))"
        guard n.n_input <= ONNXModel.Limits.namesPerNode, n.n_output <= ONNXModel.Limits.namesPerNode,
            n.n_attribute <= ONNXModel.Limits.namesPerNode
        else { throw fail("\(label): more than \(ONNXModel.Limits.namesPerNode) inputs, outputs or attributes") }
        inputs = (0..<n.n_input).map { n.input[$0].map { String(cString: $0) } ?? "" }
        outputs = (0..<n.n_output).map { n.output[$0].map { String(cString: $0) } ?? "" }
        attributes = try (0..<n.n_attribute).map { i in
            let a = n.attribute[i]!.pointee
            let name = a.name.map { String(cString: $0) } ?? ""
            func count(_ n: Int) throws -> Int {
                guard n <= ONNXModel.Limits.attributeValues else { throw fail("\(label), attribute \(name): \(n) values") }
                return n
            }
            let value: ONNXAttribute.Value
            switch a.type {
            case ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INT: value = .int(a.i)
            case ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__FLOAT: value = .float(a.f)
            case ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__STRING:
                value = .string(String(decoding: UnsafeBufferPointer(start: a.s.data, count: a.s.len), as: UTF8.self))
            case ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INTS:
                value = .ints(Array(UnsafeBufferPointer(start: a.ints, count: try count(a.n_ints))))
            case ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__FLOATS:
                value = .floats(Array(UnsafeBufferPointer(start: a.floats, count: try count(a.n_floats))))
            case ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__TENSOR:
                guard let t = a.t else { throw fail("\(label), attribute \(name): a tensor attribute without its tensor") }
                value = .tensor(try ONNXTensor(t.pointee, fail: fail, external: external))
            default: value = .other(Int32(bitPattern: a.type.rawValue))
            }
            return ONNXAttribute(name, value)
        }
    }

    func c(_ c: CMemory) -> Onnx__NodeProto {
        var n = Onnx__NodeProto()
        onnx__node_proto__init(&n)
        (n.name, n.op_type, n.domain) = (c.string(name), c.string(opType), c.string(domain))
        (n.n_input, n.input) = (inputs.count, c.strings(inputs))
        (n.n_output, n.output) = (outputs.count, c.strings(outputs))
        let attributes = attributes.map { attribute -> UnsafeMutablePointer<Onnx__AttributeProto> in
            var a = Onnx__AttributeProto()
            onnx__attribute_proto__init(&a)
            a.name = c.string(attribute.name)
            a.has_type = 1
            switch attribute.value {
            case .int(let v): (a.type, a.has_i, a.i) = (ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INT, 1, v)
            case .float(let v): (a.type, a.has_f, a.f) = (ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__FLOAT, 1, v)
            case .string(let v):
                let bytes = Array(v.utf8)
                (a.type, a.has_s, a.s) = (
                    ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__STRING, 1, ProtobufCBinaryData(len: bytes.count, data: c.array(bytes))
                )
            case .ints(let v): (a.type, a.n_ints, a.ints) = (ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INTS, v.count, c.array(v))
            case .floats(let v): (a.type, a.n_floats, a.floats) = (ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__FLOATS, v.count, c.array(v))
            case .tensor(let t): (a.type, a.t) = (ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__TENSOR, c.store(t.c(c)))
            case .other: a.has_type = 0  // never written by Tether
            }
            return c.store(a)
        }
        (n.n_attribute, n.attribute) = (attributes.count, c.pointers(attributes))
        return n
    }
}

extension ONNXTensor {
    init(_ t: Onnx__TensorProto, fail: (String) -> ONNXError, external: ONNXModel.ExternalData?) throws {
        let name = t.name.map { String(cString: $0) } ?? ""
        let label = "tensor \(name.isEmpty ? "(unnamed)" : name)"
        guard t.n_dims <= ONNXModel.Limits.rank else { throw fail("\(label): rank \(t.n_dims), more than \(ONNXModel.Limits.rank)") }
        var count = 1
        let dims = try (0..<t.n_dims).map { i in
            let d = t.dims[i]
            guard d >= 0, d <= Int64(ONNXModel.Limits.elements) else { throw fail("\(label): dimension \(i) is \(d)") }
            let (product, overflow) = count.multipliedReportingOverflow(by: Int(d))
            guard !overflow, product <= ONNXModel.Limits.elements else {
                throw fail("\(label): more than \(ONNXModel.Limits.elements) elements")
            }
            count = product
            return Int(d)
        }
        guard let type = ElementType(rawValue: t.data_type) else {
            throw fail("\(label): element type \(t.data_type) (Tether reads float, int32 and int64 tensors)")
        }
        var raw: [UInt8]?
        if t.has_data_location != 0 && t.data_location == ONNX__TENSOR_PROTO__DATA_LOCATION__EXTERNAL {
            guard let external else { throw fail("\(label): stored outside the model (external data), and no folder to read it from") }
            var entries: [String: String] = [:]
            for i in 0..<t.n_external_data {
                let e = t.external_data[i]!.pointee
                entries[e.key.map { String(cString: $0) } ?? ""] = e.value.map { String(cString: $0) } ?? ""
            }
            guard let location = entries["location"] else { throw fail("\(label): external data without a location") }
            guard let offset = Int(entries["offset"] ?? "0"), offset >= 0 else {
                throw fail("\(label): external data offset \(entries["offset"]!)")
            }
            let length = try entries["length"].map { text -> Int in
                guard let n = Int(text), n >= 0 else { throw fail("\(label): external data length \(text)") }
                return n
            }
            raw = try external(location, offset, length)
        } else if t.has_raw_data != 0 {
            raw = Array(UnsafeBufferPointer(start: t.raw_data.data, count: t.raw_data.len))
        }
        let width = type == .float || type == .int32 ? 4 : 8
        func fromRaw<T>(_: T.Type) throws -> [T]? {
            guard let raw else { return nil }
            guard raw.count == count * width else {
                throw fail("\(label): \(raw.count) bytes of data for shape \(dims) (\(count) elements of \(width) bytes)")
            }
            return raw.withUnsafeBytes { bytes in (0..<count).map { bytes.loadUnaligned(fromByteOffset: $0 * width, as: T.self) } }
        }
        func typed<T>(_ n: Int, _ p: UnsafeMutablePointer<T>?) throws -> [T] {
            guard n == count else { throw fail("\(label): \(n) values for shape \(dims) (\(count) elements)") }
            return Array(UnsafeBufferPointer(start: p, count: n))
        }
        let data: Data
        switch type {
        case .float: data = .floats(try fromRaw(Float.self) ?? typed(t.n_float_data, t.float_data))
        case .int32: data = .int32s(try fromRaw(Int32.self) ?? typed(t.n_int32_data, t.int32_data))
        case .int64: data = .int64s(try fromRaw(Int64.self) ?? typed(t.n_int64_data, t.int64_data))
        }
        (self.name, self.dims, self.data) = (name, dims, data)
    }

    /// Data as raw little-endian bytes, as torch.onnx.export writes initializers.
    func c(_ c: CMemory) -> Onnx__TensorProto {
        var t = Onnx__TensorProto()
        onnx__tensor_proto__init(&t)
        t.name = c.string(name)
        (t.n_dims, t.dims) = (dims.count, c.array(dims.map(Int64.init)))
        (t.has_data_type, t.data_type) = (1, elementType.rawValue)
        let bytes: [UInt8] =
            switch data {
            case .floats(let v): v.withUnsafeBytes { Array($0) }
            case .int32s(let v): v.withUnsafeBytes { Array($0) }
            case .int64s(let v): v.withUnsafeBytes { Array($0) }
            }
        (t.has_raw_data, t.raw_data) = (1, ProtobufCBinaryData(len: bytes.count, data: c.array(bytes)))
        return t
    }
}

extension ONNXValue {
    init(_ v: Onnx__ValueInfoProto, fail: (String) -> ONNXError) throws {
        name = v.name.map { String(cString: $0) } ?? ""
        elementType = 0
        shape = nil
        guard let type = v.type?.pointee, type.value_case == ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE, let tensor = type.tensor_type?.pointee
        else {
            throw fail("graph value \(name): not a tensor (Tether reads tensor inputs and outputs)")
        }
        elementType = tensor.elem_type
        if let s = tensor.shape?.pointee {
            guard s.n_dim <= ONNXModel.Limits.rank else { throw fail("graph value \(name): rank \(s.n_dim)") }
            shape = try (0..<s.n_dim).map { i in
                let d = s.dim[i]!.pointee
                switch d.value_case {
                case ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_VALUE:
                    guard d.dim_value >= 0, d.dim_value <= Int64(ONNXModel.Limits.elements) else {
                        throw fail("graph value \(name): dimension \(i) is \(d.dim_value)")
                    }
                    return .size(Int(d.dim_value))
                case ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_PARAM: return .named(d.dim_param.map { String(cString: $0) } ?? "")
                default: return .named("")
                }
            }
        }
    }

    func c(_ c: CMemory) -> Onnx__ValueInfoProto {
        var v = Onnx__ValueInfoProto()
        onnx__value_info_proto__init(&v)
        v.name = c.string(name)
        var tensor = Onnx__TypeProto__Tensor()
        onnx__type_proto__tensor__init(&tensor)
        (tensor.has_elem_type, tensor.elem_type) = (1, elementType)
        if let shape {
            var s = Onnx__TensorShapeProto()
            onnx__tensor_shape_proto__init(&s)
            let dims = shape.map { dimension -> UnsafeMutablePointer<Onnx__TensorShapeProto__Dimension> in
                var d = Onnx__TensorShapeProto__Dimension()
                onnx__tensor_shape_proto__dimension__init(&d)
                switch dimension {
                case .size(let n): (d.value_case, d.dim_value) = (ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_VALUE, Int64(n))
                case .named(let p): (d.value_case, d.dim_param) = (ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_PARAM, c.string(p))
                }
                return c.store(d)
            }
            (s.n_dim, s.dim) = (dims.count, c.pointers(dims))
            tensor.shape = c.store(s)
        }
        var type = Onnx__TypeProto()
        onnx__type_proto__init(&type)
        (type.value_case, type.tensor_type) = (ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE, c.store(tensor))
        v.type = c.store(type)
        return v
    }
}
