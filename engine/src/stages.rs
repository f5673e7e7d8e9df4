//! The transform stages, one file each, in pipeline order.

pub mod chunker;
pub mod entities;
pub mod generator;
pub mod positions;
pub mod questions;
pub mod sampler;
pub mod scorer;
pub mod seed;

pub use chunker::ChunkerStage;
pub use generator::GeneratorStage;
pub use positions::PositionsStage;
pub use questions::QuestionsStage;
pub use sampler::SamplerStage;
pub use scorer::ScorerStage;
