import Testing
import TetherNN
@testable import TetherTrain

@Suite struct ModelFamilyTests {
    @Test func everyFamilyIsListedOnceAndItsDefaultsAreARunThatValidates() throws {
        #expect(Set(ModelFamily.names).count == ModelFamily.all.count)
        #expect(ModelFamily.names == ["mlp", "mlp-wn", "cnn-wn", "autoencoder-tied", "lm-tied", "wide-deep", "spec"])
        for family in ModelFamily.all {
            var c = TrainingConfig.defaults(for: family.name)
            if family.name == "spec" {
                #expect { try c.validate() } throws: { "\($0)".contains("--model spec needs a spec: --model FILE.yaml") }
                c.spec = ModelSpec(
                    name: "t", input: [4],
                    layers: [
                        LayerSpec(.relu),
                        {
                            var d = LayerSpec(.dense); d.out = 3; return d
                        }()
                    ])
            }
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
