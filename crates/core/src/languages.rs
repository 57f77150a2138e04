//! Languages as the API and the CLI name them: the table lives with the
//! models (`precis_backend::languages`), whose families map its codes to
//! their own; the layers above read it from here.

pub use precis_backend::languages::{language, language_name, Language, LANGUAGES};
