fn main() {
    println!("mmr1-fast: under construction");
}
