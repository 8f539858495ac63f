import Testing
import TetherTrain
@testable import TetherCluster

@Suite struct CompressionSummaryTests {
    /// The coordinator's first line says how the gradients travel, and says so when a PowerSGD start
    /// step lies past the run's end (DDP's default of 1000 outlasts a short run: nothing is compressed).
    @Test func theFirstLineSaysWhatTravels() {
        var c = TrainingConfig()
        #expect(c.compressionSummary(totalSteps: 100) == nil)
        c.compression = .bf16
        #expect(c.compressionSummary(totalSteps: 100) == "gradients as bf16 on the wire (error feedback)")
        c.compression = .powersgd
        c.errorFeedback = false
        let plain = "gradients as PowerSGD factors of rank \(TrainingConfig.defaultPowerSGDRank) from step"
        #expect(
            c.compressionSummary(totalSteps: TrainingConfig.defaultPowerSGDStartStep - 62)
                == "\(plain) \(TrainingConfig.defaultPowerSGDStartStep) (no error feedback); the run ends first, so every step is a plain all-reduce (--powersgd-start-step)"
        )
        c.powerSGDStartStep = 937
        #expect(c.compressionSummary(totalSteps: 938) == "\(plain) 937 (no error feedback)")
        c.powerSGDStartStep = 938
        #expect(c.compressionSummary(totalSteps: 938)?.hasSuffix("so every step is a plain all-reduce (--powersgd-start-step)") == true)
    }
}
