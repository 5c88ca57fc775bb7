fn main() {
    println!("dftpd-sim: the simulator lands with issue 3");
}
