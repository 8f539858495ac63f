/// An ONNX model as Tether reads and writes it: one graph of nodes over named values, its weights as
/// initializers, its inputs and outputs with element types and shapes (onnx.proto; the wire form is
/// ONNXModel+Wire.swift). Only float, int32 and int64 tensors carry data here.
public struct ONNXModel: Equatable, Sendable {
    public var irVersion: Int64 = 8
    /// The default domain's operator set version (torch.onnx.export writes 17 or later).
    public var opset: Int64 = 17
    public var producer = "tether"
    public var graph: ONNXGraph

    public init(opset: Int64 = 17, graph: ONNXGraph) { (self.opset, self.graph) = (opset, graph) }
}

public struct ONNXGraph: Equatable, Sendable {
    public var name: String
    /// In topological order: a node reads only graph inputs, initializers and earlier nodes' outputs.
    public var nodes: [ONNXNode]
    public var initializers: [ONNXTensor]
    public var inputs: [ONNXValue]
    public var outputs: [ONNXValue]

    public init(name: String, nodes: [ONNXNode], initializers: [ONNXTensor], inputs: [ONNXValue], outputs: [ONNXValue]) {
        (self.name, self.nodes, self.initializers, self.inputs, self.outputs) = (name, nodes, initializers, inputs, outputs)
    }
}

public struct ONNXNode: Equatable, Sendable {
    public var name: String
    public var opType: String
    public var domain: String
    public var inputs: [String]
    public var outputs: [String]
    public var attributes: [ONNXAttribute]

    public init(_ opType: String, name: String, inputs: [String], outputs: [String], attributes: [ONNXAttribute] = [], domain: String = "")
    {
        (self.opType, self.name, self.inputs, self.outputs, self.attributes, self.domain) = (
            opType, name, inputs, outputs, attributes, domain
        )
    }

    public func attribute(_ name: String) -> ONNXAttribute.Value? { attributes.first { $0.name == name }?.value }
}

public struct ONNXAttribute: Equatable, Sendable {
    public enum Value: Equatable, Sendable {
        case int(Int64), float(Float), string(String), ints([Int64]), floats([Float]), tensor(ONNXTensor)
        /// A kind Tether does not use (a graph, strings, a list of tensors): its ONNX type number.
        case other(Int32)
    }
    public var name: String
    public var value: Value
    public init(_ name: String, _ value: Value) { (self.name, self.value) = (name, value) }
}

/// A tensor with its data: elements in row-major order.
public struct ONNXTensor: Equatable, Sendable {
    /// ONNX's TensorProto.DataType numbers for the types Tether reads.
    public enum ElementType: Int32, Sendable {
        case float = 1, int32 = 6, int64 = 7
    }
    public enum Data: Equatable, Sendable {
        case floats([Float]), int32s([Int32]), int64s([Int64])
    }
    public var name: String
    public var dims: [Int]
    public var data: Data

    public init(_ name: String, dims: [Int], floats: [Float]) { (self.name, self.dims, self.data) = (name, dims, .floats(floats)) }
    public init(_ name: String, dims: [Int], int64s: [Int64]) { (self.name, self.dims, self.data) = (name, dims, .int64s(int64s)) }

    public var elementType: ElementType {
        switch data {
        case .floats: .float
        case .int32s: .int32
        case .int64s: .int64
        }
    }
    public var floats: [Float]? { if case .floats(let f) = data { f } else { nil } }
    /// int32 or int64 elements, widened.
    public var integers: [Int64]? {
        switch data {
        case .int64s(let v): v
        case .int32s(let v): v.map(Int64.init)
        case .floats: nil
        }
    }
}

/// A graph input or output: its name, element type and shape, a dimension either a number or a name
/// (e.g. "batch") that stands for any size.
public struct ONNXValue: Equatable, Sendable {
    public enum Dimension: Equatable, Sendable {
        case size(Int), named(String)
    }
    public var name: String
    public var elementType: Int32
    public var shape: [Dimension]?
    public init(_ name: String, elementType: ONNXTensor.ElementType = .float, shape: [Dimension]?) {
        (self.name, self.elementType, self.shape) = (name, elementType.rawValue, shape)
    }
}

/// A file that is not a model this importer can read, or a graph outside what it supports; `source`
/// is the file, the message names the node, field or tensor.
public struct ONNXError: Error, CustomStringConvertible, Equatable {
    public let source: String
    public let message: String
    public init(_ source: String, _ message: String) { (self.source, self.message) = (source, message) }
    public var description: String { "\(source): \(message)" }
}
