import Foundation
import TetherComm
import TetherData
import TetherTrain

/// Served data (`--serve-data`): the coordinator holds the image dataset and answers each worker's
/// DataRequest with the rows it names; a worker asks for its shard's samples one epoch at a time (and
/// its share of the test set), so it needs no copy of the dataset and holds only 1/N of it.
enum DataServing {
    /// Requests of at most this many samples (a Fashion-MNIST reply of 3.2 MB: the copies a reply passes
    /// through on its way into the shard stay small beside the shard itself).
    static let samplesPerRequest = 4096

    static func split(_ number: UInt32) -> FashionMNIST.Split { number == 0 ? .train : .test }
    static func number(_ split: FashionMNIST.Split) -> UInt32 { split == .train ? 0 : 1 }

    /// The coordinator's answer to `request` from the splits it serves.
    static func answer(_ request: Envelope.DataRequest, train: ImageDataset, test: ImageDataset) -> Envelope.DataRows {
        let data = request.split == 0 ? train : test
        var rows = Envelope.DataRows(split: request.split, count: UInt32(data.count), height: UInt32(data.height), width: UInt32(data.width),
                                     classes: UInt32(data.classes))
        if let bad = request.indices.first(where: { Int($0) >= data.count }) {
            return Envelope.DataRows(split: request.split, error: "sample \(bad) requested of a \(split(request.split)) split of \(data.count)")
        }
        let f = data.features
        rows.pixels.reserveCapacity(request.indices.count * f)
        data.pixels.withUnsafeBufferPointer { px in
            for i in request.indices { rows.pixels.append(contentsOf: px[Int(i) * f ..< (Int(i) + 1) * f]) }
        }
        rows.labels = request.indices.map { UInt8(data.labels[Int($0)]) }
        return rows
    }
}

/// A worker's image source: rows asked of the coordinator over its control channel.
final class ServedImages: ImageSource {
    private let ask: (Envelope.DataRequest) throws -> Envelope.DataRows

    /// `ask` sends a request and returns the coordinator's answer.
    init(ask: @escaping (Envelope.DataRequest) throws -> Envelope.DataRows) { self.ask = ask }

    private func request(_ split: FashionMNIST.Split, _ indices: [UInt32]) throws -> Envelope.DataRows {
        let rows = try ask(Envelope.DataRequest(split: DataServing.number(split), indices: indices))
        guard rows.error.isEmpty else { throw ClusterError("the coordinator cannot serve the \(split) samples: \(rows.error)") }
        guard rows.split == DataServing.number(split), rows.labels.count == indices.count else {
            throw ClusterError("the coordinator answered a request for \(indices.count) \(split) samples with \(rows.labels.count) of split \(rows.split)")
        }
        return rows
    }

    func shape(_ split: FashionMNIST.Split) throws -> ImageShape {
        let r = try request(split, [])
        return ImageShape(count: Int(r.count), height: Int(r.height), width: Int(r.width), classes: Int(r.classes))
    }

    func rows(_ split: FashionMNIST.Split, _ indices: [Int]) throws -> ImageDataset {
        var pixels: [UInt8] = [], labels: [Int32] = []
        var shape = (height: 0, width: 0, classes: 0)
        for start in stride(from: 0, to: max(indices.count, 1), by: DataServing.samplesPerRequest) {
            let part = indices[start ..< min(start + DataServing.samplesPerRequest, indices.count)].map { UInt32($0) }
            let r = try request(split, part)
            if start == 0 { pixels.reserveCapacity(indices.count * r.pixels.count / max(part.count, 1)) }
            pixels += r.pixels
            labels += r.labels.map { Int32($0) }
            shape = (Int(r.height), Int(r.width), Int(r.classes))
        }
        return ImageDataset(pixels: pixels, labels: labels, height: shape.height, width: shape.width, classes: shape.classes)
    }
}
