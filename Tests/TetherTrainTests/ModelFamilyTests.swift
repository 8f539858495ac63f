import Testing
@testable import TetherTrain

@Suite struct ModelFamilyTests {
    @Test func everyFamilyIsListedOnceAndItsDefaultsAreARunThatValidates() throws {
        #expect(Set(ModelFamily.names).count == ModelFamily.all.count)
        #expect(ModelFamily.names == ["mlp", "mlp-wn", "cnn-wn", "autoencoder-tied", "lm-tied", "wide-deep"])
        for family in ModelFamily.all {
            let c = TrainingConfig.defaults(for: family.name)
            #expect(c.model == family.name)
            try c.validate()
            #expect(!family.summary.isEmpty)
        }
        #expect(
            TrainingConfig.defaults(for: "lm-tied").optimizer.kind == .sgd
                && TrainingConfig.defaults(for: "wide-deep").optimizer.ftrl.alpha == 0.2)
        #expect(ModelFamily.all.first { $0.name == "lm-tied" }?.itemsPerStep(TrainingConfig.defaults(for: "lm-tied")) == 20 * 35)
        #expect { try ModelFamily.named("mlp-wm") } throws: { "\($0)".contains("choose one of mlp, mlp-wn") }
    }
}
