use ringkv_guest::validate;

#[validate]
struct Validator {
    strict: bool,
}

fn main() {}
