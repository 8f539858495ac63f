import Foundation
import TetherComm
import TetherMessages
import TetherData
import TetherTrain

/// Served data (`--serve-data`): the coordinator holds the datasets (as its own workload read them) and
/// answers each worker's DataRequest with the rows it names; a worker asks for what its shard reads
/// (an epoch's samples at a time, its share of the test set, a language model's streams once), so it
/// needs no copy of the dataset and holds only its part.
public enum DataServing {
    /// Requests of at most this many rows (3.2 MB of Fashion-MNIST): the copies a reply passes through
    /// on its way into the shard stay small beside the shard itself.
    public static let rowsPerRequest = 4096

    static func number(_ split: FashionMNIST.Split) -> UInt32 { split == .train ? 0 : 1 }

    /// The coordinator's answer to `request` from the splits it serves.
    public static func answer(_ request: DataRequest, train: any ServableDataset, test: any ServableDataset) -> DataRows {
        let data = request.split == 0 ? train : test
        if let bad = request.indices.first(where: { Int($0) >= data.count }) {
            return DataRows(
                split: request.split,
                error: "row \(bad) requested of a \(request.split == 0 ? "training" : "held-out") split of \(data.count)")
        }
        return DataRows(
            split: request.split, count: UInt32(data.count), shape: data.encodedShape(),
            rows: data.encodedRows(request.indices.map { Int($0) }))
    }
}

/// A worker's sample source: rows asked of the coordinator over its control channel.
final class ServedData: SampleSource {
    private let ask: (DataRequest) throws -> DataRows

    /// `ask` sends a request and returns the coordinator's answer.
    init(ask: @escaping (DataRequest) throws -> DataRows) { self.ask = ask }

    private func request(_ split: FashionMNIST.Split, _ indices: ArraySlice<Int>) throws -> DataRows {
        let answer = try ask(DataRequest(split: DataServing.number(split), indices: indices.map { UInt32($0) }))
        guard answer.error.isEmpty else { throw ClusterError("the coordinator cannot serve the \(split) split: \(answer.error)") }
        guard answer.split == DataServing.number(split) else {
            throw ClusterError("the coordinator answered a request for the \(split) split with split \(answer.split)")
        }
        return answer
    }

    func describe(_ split: FashionMNIST.Split) throws -> (count: Int, shape: [UInt8]) {
        let answer = try request(split, [])
        return (Int(answer.count), answer.shape)
    }

    func rows(_ split: FashionMNIST.Split, _ indices: [Int]) throws -> [UInt8] {
        var rows: [UInt8] = []
        for start in stride(from: 0, to: indices.count, by: DataServing.rowsPerRequest) {
            let part = indices[start..<min(start + DataServing.rowsPerRequest, indices.count)]
            let answer = try request(split, part)
            if start == 0 { rows.reserveCapacity(answer.rows.count / part.count * indices.count) }
            rows += answer.rows
        }
        return rows
    }
}
