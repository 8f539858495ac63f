import Testing
import Foundation
import CZlib
@testable import TetherData
import TetherTensor

/// Writes IDX files (plain or gzipped) into a fresh folder for one test.
final class IDXFolder {
    let url = FileManager.default.temporaryDirectory.appendingPathComponent("tether-idx-\(UUID())")
    init() { try! FileManager.default.createDirectory(at: url, withIntermediateDirectories: true) }
    deinit { try? FileManager.default.removeItem(at: url) }

    static func idx(dims: [Int], magic: UInt32? = nil, body: [UInt8]? = nil) -> [UInt8] {
        func be(_ v: UInt32) -> [UInt8] { [UInt8(v >> 24), UInt8(v >> 16 & 0xFF), UInt8(v >> 8 & 0xFF), UInt8(v & 0xFF)] }
        let header = be(magic ?? (0x0800 | UInt32(dims.count))) + dims.flatMap { be(UInt32($0)) }
        return header + (body ?? (0..<dims.reduce(1, *)).map { UInt8($0 % 251) })
    }

    @discardableResult
    func write(_ name: String, _ bytes: [UInt8], gzip: Bool = false) -> String {
        let path = url.appendingPathComponent(name).path
        if gzip {
            let f = gzopen(path, "wb")!
            bytes.withUnsafeBytes { _ = gzwrite(f, $0.baseAddress, UInt32($0.count)) }
            gzclose(f)
        } else {
            FileManager.default.createFile(atPath: path, contents: Data(bytes))
        }
        return path
    }
}

@Suite struct IDXReaderTests {
    @Test(arguments: [false, true])
    func readsGoodFiles(gzip: Bool) throws {
        let dir = IDXFolder()
        let images = dir.write("train-images-idx3-ubyte" + (gzip ? ".gz" : ""), IDXFolder.idx(dims: [3, 2, 2]), gzip: gzip)
        let labels = dir.write("train-labels-idx1-ubyte" + (gzip ? ".gz" : ""), IDXFolder.idx(dims: [3], body: [7, 0, 9]), gzip: gzip)
        let a = try IDX.read(images)
        #expect(a.dimensions == [3, 2, 2])
        #expect(a.bytes == (0..<12).map { UInt8($0) })
        let ds = try FashionMNIST.load(directory: dir.url.path, split: .train)
        #expect(ds.count == 3 && ds.height == 2 && ds.width == 2)
        #expect(ds.labels == [7, 0, 9])
        _ = labels
        let (x, y) = ds.batch([2, 0], as: Float.self)
        #expect(x.shape == [2, 4])
        #expect(x.scalars == [8, 9, 10, 11, 0, 1, 2, 3].map { Float($0) * (1 / 255) })
        #expect(y == [9, 7])
    }

    @Test func missingFileNamesThePath() {
        let path = "/nonexistent/t10k-images-idx3-ubyte.gz"
        #expect(throws: DataError.missingFile(path)) { try IDX.read(path) }
    }

    @Test func wrongMagic() {
        let dir = IDXFolder()
        let path = dir.write("x", IDXFolder.idx(dims: [2, 2], magic: 0x0000_0D02))  // 0x0D: float32 elements
        #expect { try IDX.read(path) } throws: { "\($0)".contains(path) && "\($0)".contains("magic 0x00000D02") }
    }

    @Test(arguments: [false, true])
    func truncatedFile(gzip: Bool) {
        let dir = IDXFolder()
        let path = dir.write("x", Array(IDXFolder.idx(dims: [4, 3, 3]).dropLast(5)), gzip: gzip)
        #expect(throws: DataError.truncated(file: path, expected: 16 + 36, found: 16 + 31)) { try IDX.read(path) }
    }

    @Test func truncatedHeader() {
        let dir = IDXFolder()
        let path = dir.write("x", Array(IDXFolder.idx(dims: [4, 3, 3]).prefix(9)))
        #expect(throws: DataError.truncated(file: path, expected: 16, found: 9)) { try IDX.read(path) }
    }

    @Test func cutGzipStream() throws {
        let dir = IDXFolder()
        let whole = dir.write("whole.gz", IDXFolder.idx(dims: [1000]), gzip: true)
        let bytes = try Data(contentsOf: URL(fileURLWithPath: whole))
        let path = dir.write("cut.gz", Array(bytes.prefix(bytes.count / 2)))
        #expect { try IDX.read(path) } throws: { "\($0)".contains(path) }
    }

    @Test func trailingBytes() {
        let dir = IDXFolder()
        let path = dir.write("x", IDXFolder.idx(dims: [2]) + [1, 2, 3])
        #expect(throws: DataError.trailingBytes(file: path, expected: 10, found: 13)) { try IDX.read(path) }
    }

    @Test func mismatchedImageAndLabelCounts() {
        let dir = IDXFolder()
        let images = dir.write("i", IDXFolder.idx(dims: [5, 2, 2]))
        let labels = dir.write("l", IDXFolder.idx(dims: [4], body: [0, 1, 2, 3]))
        #expect { try ImageDataset(imagesFile: images, labelsFile: labels) } throws: {
            "\($0)" == "\(images) holds 5 images but \(labels) holds 4 labels"
        }
    }

    /// A limit reads the first records only, equal to the whole file's prefix; a limit past the end
    /// reads the whole file; a file cut within the records a limit asks for is still an error; and
    /// the image and label files must agree on their counts whatever the limit.
    @Test(arguments: [false, true])
    func aLimitReadsTheFirstRecords(gzip: Bool) throws {
        let dir = IDXFolder()
        let path = dir.write("x", IDXFolder.idx(dims: [300, 5, 7]), gzip: gzip)
        let whole = try IDX.read(path)
        for limit in [0, 1, 2, 299, 300, 1000] {
            let part = try IDX.read(path, limit: limit)
            let n = min(limit, 300)
            #expect(part.dimensions == [n, 5, 7] && part.recordsInFile == 300, "limit \(limit)")
            #expect(part.bytes == Array(whole.bytes.prefix(n * 35)), "limit \(limit)")
        }
        let cut = dir.write("cut", Array(IDXFolder.idx(dims: [4, 3, 3]).dropLast(20)), gzip: gzip)
        #expect(try IDX.read(cut, limit: 1).dimensions == [1, 3, 3])
        #expect(throws: DataError.truncated(file: cut, expected: 16 + 18, found: 16 + 16)) { try IDX.read(cut, limit: 2) }
        let images = dir.write("i", IDXFolder.idx(dims: [5, 2, 2]), gzip: gzip)
        let labels = dir.write("l", IDXFolder.idx(dims: [4], body: [0, 1, 2, 3]), gzip: gzip)
        #expect { try ImageDataset(imagesFile: images, labelsFile: labels, limit: 2) } throws: {
            "\($0)" == "\(images) holds 5 images but \(labels) holds 4 labels"
        }
    }

    @Test func labelOutOfRange() {
        let dir = IDXFolder()
        let images = dir.write("i", IDXFolder.idx(dims: [2, 2, 2]))
        let labels = dir.write("l", IDXFolder.idx(dims: [2], body: [3, 12]))
        #expect { try ImageDataset(imagesFile: images, labelsFile: labels) } throws: { "\($0)".contains("label 12 of sample 1") }
    }

    @Test(
        .enabled(
            if: FileManager.default.fileExists(atPath: FashionMNIST.defaultDirectory),
            "needs Debian's dataset-fashion-mnist (scripts/test installs it)"))
    func realFashionMNIST() throws {
        let train = try FashionMNIST.load(split: .train), test = try FashionMNIST.load(split: .test)
        #expect(train.count == 60_000 && test.count == 10_000)
        #expect(train.height == 28 && train.width == 28)
        // Fashion-MNIST is balanced: 6,000 training and 1,000 test images per class.
        for c in 0..<10 {
            #expect(train.labels.filter { $0 == c }.count == 6000)
            #expect(test.labels.filter { $0 == c }.count == 1000)
        }
    }
}

@Suite struct EpochPlanTests {
    @Test(arguments: [(0, 4), (1, 4), (10, 3), (10, 10), (10, 64), (1000, 64)])
    func everySampleExactlyOncePerEpoch(count: Int, batch: Int) {
        let plan = EpochPlan(seed: 42, epoch: 3, count: count, globalBatch: batch)
        let visited = (0..<plan.steps).flatMap { plan.samples(step: $0) }
        #expect(visited.sorted() == Array(0..<count))
        #expect(plan.steps == (count + batch - 1) / batch)
        #expect((0..<plan.steps).allSatisfy { $0 == plan.steps - 1 || plan.samples(step: $0).count == batch })
    }

    /// Held-out rows: every tenth by default; a fraction's rows spread evenly, as many as it says (at
    /// least one, never all), 0.1 the same as the default where the count is a multiple of ten.
    @Test func heldOutRowsAreSpreadEvenly() {
        #expect(heldOutRows(count: 25) == [9, 19] && heldOutRows(count: 5) == [4])
        #expect(heldOutRows(count: 3000, fraction: 0.1) == heldOutRows(count: 3000))
        #expect(heldOutRows(count: 8, fraction: 0.25) == [3, 7])
        #expect(heldOutRows(count: 10, fraction: 0.01) == [9] && heldOutRows(count: 4, fraction: 0.99) == [0, 1, 3])
        for (count, fraction) in [(3000, 0.2), (1205, 0.3), (7, 0.5), (100_003, 0.123)] {
            let rows = heldOutRows(count: count, fraction: fraction)
            #expect(rows.count == Int((fraction * Double(count)).rounded()) && Set(rows).count == rows.count)
            #expect(rows.allSatisfy { (0..<count).contains($0) } && rows == rows.sorted())
            let gaps = zip(rows.dropFirst(), rows).map { $0 - $1 }
            #expect(gaps.max()! - gaps.min()! <= 1, "\(count) x \(fraction): gaps \(Set(gaps))")
        }
    }

    @Test func deterministicBySeedAndEpoch() {
        let a = EpochPlan(seed: 1, epoch: 0, count: 500, globalBatch: 8)
        #expect(a == EpochPlan(seed: 1, epoch: 0, count: 500, globalBatch: 8))
        #expect(a.order != EpochPlan(seed: 1, epoch: 1, count: 500, globalBatch: 8).order)
        #expect(a.order != EpochPlan(seed: 2, epoch: 0, count: 500, globalBatch: 8).order)
    }
}
