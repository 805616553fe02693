pub use keygate_kernel::KeyId;
